#!/bin/sh
# Build the JMH uber-jar and run it; any arguments go to JMH, e.g.
#   ./run.sh                          # defaults: 1 fork, 3x1s warmup, 5x1s measurement
#   ./run.sh -wi 1 -i 1 -w 1 -r 1     # quick smoke run
#   ./run.sh pingPong -rf json -rff out.json
set -eu
dir=$(cd "$(dirname "$0")" && pwd)
mvn -q -B -f "$dir/pom.xml" package
exec java -jar "$dir/target/benchmarks.jar" "$@"
