//! Relay configuration: embedded defaults, an optional TOML file, then flags.
//!
//! `sotto-relay` with no arguments must just work (loopback, `./sotto-relay-data`,
//! generated certificate), so every field has a safe default; the TOML file and
//! the command line override them in that order.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{RelayError, Result};

/// Everything an operator can tune. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// QUIC listen address (UDP).
    pub listen: SocketAddr,
    /// RocksDB directory and generated certificate location.
    pub data_dir: PathBuf,
    /// Certificate, DER or PEM (certbot's `fullchain.pem`); default
    /// `<data_dir>/cert.der`, generated self-signed if missing. Its SHA-256
    /// fingerprint is part of every user's address: keep it (and its key)
    /// across renewals, or every client must be given the new address.
    pub cert: Option<PathBuf>,
    /// Private key, DER PKCS#8 or PEM (certbot's `privkey.pem`); default
    /// `<data_dir>/key.der`.
    pub key: Option<PathBuf>,
    /// HTTP address for `/metrics` and `/health` (absent: `--no-metrics`).
    pub metrics_listen: Option<SocketAddr>,
    /// Largest accepted envelope payload, bytes.
    pub max_envelope_bytes: usize,
    /// Largest request frame, bytes (bounds batch sends).
    pub max_frame_bytes: usize,
    /// Most items in one batch send.
    pub max_batch_items: usize,
    /// Most recipients of one shared send (a group message stored once).
    pub max_shared_recipients: usize,
    /// Per-mailbox quota: stored envelopes.
    pub mailbox_max_envelopes: usize,
    /// Per-mailbox quota: stored payload bytes.
    pub mailbox_max_bytes: u64,
    /// Undelivered envelopes are deleted after this many seconds.
    pub envelope_ttl_secs: u64,
    /// Send rate per authenticated key (envelopes per second, sustained;
    /// kept across that key's connections).
    pub send_rate_per_sec: f64,
    /// Send burst per authenticated key.
    pub send_burst: u32,
    /// Send rate per source address (an IPv4 address or an IPv6 /64), all
    /// keys and connections from it together.
    pub source_send_rate_per_sec: f64,
    /// Send burst per source address.
    pub source_send_burst: u32,
    /// Delivery- and push-token registrations per source address in a
    /// burst (then one a second): each keeps a record per key. Raise it
    /// behind a NAT that many devices share (or for a load generator).
    pub registration_burst: u32,
    /// Ephemeral envelopes one source address may send one mailbox in a
    /// burst, and per second after it (live signals come a few a minute).
    pub ephemeral_burst: u32,
    /// See `ephemeral_burst`.
    pub ephemeral_rate_per_sec: f64,
    /// Envelopes from strangers (no valid delivery token) a mailbox holds at
    /// once (within its quota: a slice above the quota is the quota);
    /// applies once its owner registered a token.
    pub stranger_max_envelopes: usize,
    /// Payload bytes from strangers a mailbox holds at once.
    pub stranger_max_bytes: u64,
    /// Bundle fetches per requester: burst, then `bundle_rate_per_sec`.
    pub bundle_requester_burst: u32,
    /// Bundle fetches per target: burst, then `bundle_rate_per_sec`.
    pub bundle_target_burst: u32,
    /// Sustained bundle fetch rate for both buckets.
    pub bundle_rate_per_sec: f64,
    /// Largest signed bundle blob.
    pub max_signed_bundle_bytes: usize,
    /// Largest one-time prekey item.
    pub max_prekey_bytes: usize,
    /// Most stored one-time prekeys per device and kind.
    pub max_one_time_prekeys: usize,
    /// Push a count to the owner when fewer than this many remain.
    pub prekeys_low_threshold: u32,
    /// Largest device-list body.
    pub max_device_list_bytes: usize,
    /// Largest attachment blob.
    pub max_blob_bytes: u64,
    /// Blobs are deleted after this many seconds.
    pub blob_ttl_secs: u64,
    /// Webhook called with the push token of offline devices (`http://` only).
    pub webhook_url: Option<String>,
    /// Pushes for one token are coalesced over this window.
    pub push_coalesce_ms: u64,
    /// Interval of the expiry sweep.
    pub sweep_interval_secs: u64,
    /// QUIC idle timeout; clients keep alive every 10 s.
    pub idle_timeout_secs: u64,
    /// Most concurrent request streams per connection.
    pub max_concurrent_streams: u32,
    /// Memory the relay holds for requests being received and replies being
    /// written, in all; past it new work is refused with `OVERLOADED`.
    pub memory_budget_bytes: usize,
    /// The same, per connection (a connection at its budget is held back by
    /// flow control). At least `max_frame_bytes`.
    pub connection_budget_bytes: usize,
    /// The same, for all connections from one source IP address.
    pub address_budget_bytes: usize,
    /// Most connections at once (handshakes included); more are refused.
    pub max_connections: usize,
    /// Most connections at once from one source IP address.
    pub max_connections_per_ip: usize,
    /// A request frame must arrive whole within this many seconds of its
    /// stream opening (a trickled frame is refused, its memory given back).
    pub request_timeout_secs: u64,
    /// A reply must be written within this many seconds (a peer that does
    /// not read has its stream reset).
    pub write_timeout_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            data_dir: PathBuf::from("sotto-relay-data"),
            cert: None,
            key: None,
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            max_envelope_bytes: 96 * 1024,
            max_frame_bytes: 2 * 1024 * 1024,
            max_batch_items: 64,
            max_shared_recipients: 1_000,
            mailbox_max_envelopes: 10_000,
            mailbox_max_bytes: 256 * 1024 * 1024,
            envelope_ttl_secs: 30 * 24 * 3600,
            send_rate_per_sec: 5_000.0,
            send_burst: 10_000,
            source_send_rate_per_sec: 20_000.0,
            source_send_burst: 40_000,
            registration_burst: 60,
            ephemeral_burst: 20,
            ephemeral_rate_per_sec: 5.0,
            stranger_max_envelopes: 256,
            stranger_max_bytes: 4 * 1024 * 1024,
            bundle_requester_burst: 60,
            bundle_target_burst: 100,
            bundle_rate_per_sec: 1.0,
            max_signed_bundle_bytes: 16 * 1024,
            max_prekey_bytes: 4 * 1024,
            max_one_time_prekeys: 500,
            prekeys_low_threshold: 10,
            max_device_list_bytes: 16 * 1024,
            max_blob_bytes: 100 * 1024 * 1024,
            blob_ttl_secs: 30 * 24 * 3600,
            webhook_url: None,
            push_coalesce_ms: 1_000,
            sweep_interval_secs: 60,
            idle_timeout_secs: 60,
            max_concurrent_streams: 64,
            memory_budget_bytes: 1 << 30,
            connection_budget_bytes: 4 << 20,
            address_budget_bytes: 128 << 20,
            max_connections: 50_000,
            max_connections_per_ip: 2_048,
            request_timeout_secs: 30,
            write_timeout_secs: 30,
        }
    }
}

/// Command-line flags; each overrides the TOML value when given.
#[derive(Debug, clap::Parser)]
#[command(
    name = "sotto-relay",
    version,
    about = "Sotto blind store-and-forward relay",
    after_help = "Every option can also be set in the TOML file (--config; keys are the option \
names with underscores, see relay/deploy/sotto-relay.toml) or in the environment \
(SOTTO_RELAY_<OPTION>, e.g. SOTTO_RELAY_LISTEN=0.0.0.0:7443). Precedence: flag, then \
environment, then file, then default. Logging: RUST_LOG (e.g. info, sotto_relay=debug)."
)]
pub struct Flags {
    /// Load and check the configuration (file, environment, flags), print
    /// it, and exit: 0 if the relay would start with it, 1 if not.
    #[arg(long)]
    pub check_config: bool,
    /// Log format on stderr: `text` (coloured only on a terminal) or `json`
    /// (one object per line, for log collectors).
    #[arg(long, env = "SOTTO_RELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// TOML configuration file.
    #[arg(long, short, env = "SOTTO_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// QUIC listen address.
    #[arg(long, env = "SOTTO_RELAY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory.
    #[arg(long, env = "SOTTO_RELAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Certificate: DER, or PEM (the first certificate of the file; a
    /// certbot `fullchain.pem` works).
    #[arg(long, env = "SOTTO_RELAY_CERT")]
    pub cert: Option<PathBuf>,
    /// Private key: DER PKCS#8, or PEM (PKCS#8, PKCS#1 or SEC1; certbot's
    /// `privkey.pem` works).
    #[arg(long, env = "SOTTO_RELAY_KEY")]
    pub key: Option<PathBuf>,
    /// Metrics/health HTTP address.
    #[arg(long, env = "SOTTO_RELAY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Disable the metrics/health endpoint.
    #[arg(long, env = "SOTTO_RELAY_NO_METRICS")]
    pub no_metrics: bool,
    /// Largest envelope payload, bytes.
    #[arg(long, env = "SOTTO_RELAY_MAX_ENVELOPE_BYTES")]
    pub max_envelope_bytes: Option<usize>,
    /// Per-mailbox quota (envelopes).
    #[arg(long, env = "SOTTO_RELAY_MAILBOX_MAX_ENVELOPES")]
    pub mailbox_max_envelopes: Option<usize>,
    /// Per-mailbox quota (bytes).
    #[arg(long, env = "SOTTO_RELAY_MAILBOX_MAX_BYTES")]
    pub mailbox_max_bytes: Option<u64>,
    /// Envelope TTL, seconds.
    #[arg(long, env = "SOTTO_RELAY_ENVELOPE_TTL_SECS")]
    pub envelope_ttl_secs: Option<u64>,
    /// Blob TTL, seconds.
    #[arg(long, env = "SOTTO_RELAY_BLOB_TTL_SECS")]
    pub blob_ttl_secs: Option<u64>,
    /// Largest blob, bytes.
    #[arg(long, env = "SOTTO_RELAY_MAX_BLOB_BYTES")]
    pub max_blob_bytes: Option<u64>,
    /// Send rate per authenticated key, envelopes/s.
    #[arg(long, env = "SOTTO_RELAY_SEND_RATE_PER_SEC")]
    pub send_rate_per_sec: Option<f64>,
    /// Send burst per authenticated key.
    #[arg(long, env = "SOTTO_RELAY_SEND_BURST")]
    pub send_burst: Option<u32>,
    /// Send rate per source address, envelopes/s.
    #[arg(long, env = "SOTTO_RELAY_SOURCE_SEND_RATE_PER_SEC")]
    pub source_send_rate_per_sec: Option<f64>,
    /// Send burst per source address.
    #[arg(long, env = "SOTTO_RELAY_SOURCE_SEND_BURST")]
    pub source_send_burst: Option<u32>,
    /// Token registrations per source address in a burst.
    #[arg(long, env = "SOTTO_RELAY_REGISTRATION_BURST")]
    pub registration_burst: Option<u32>,
    /// Ephemeral envelopes per source address and mailbox in a burst.
    #[arg(long, env = "SOTTO_RELAY_EPHEMERAL_BURST")]
    pub ephemeral_burst: Option<u32>,
    /// Ephemeral envelopes per source address and mailbox per second.
    #[arg(long, env = "SOTTO_RELAY_EPHEMERAL_RATE_PER_SEC")]
    pub ephemeral_rate_per_sec: Option<f64>,
    /// Envelopes from strangers one mailbox holds.
    #[arg(long, env = "SOTTO_RELAY_STRANGER_MAX_ENVELOPES")]
    pub stranger_max_envelopes: Option<usize>,
    /// Payload bytes from strangers one mailbox holds.
    #[arg(long, env = "SOTTO_RELAY_STRANGER_MAX_BYTES")]
    pub stranger_max_bytes: Option<u64>,
    /// Bundle fetch burst per requester.
    #[arg(long, env = "SOTTO_RELAY_BUNDLE_REQUESTER_BURST")]
    pub bundle_requester_burst: Option<u32>,
    /// Bundle fetch burst per target.
    #[arg(long, env = "SOTTO_RELAY_BUNDLE_TARGET_BURST")]
    pub bundle_target_burst: Option<u32>,
    /// Push webhook URL (`http://host:port/path`).
    #[arg(long, env = "SOTTO_RELAY_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Push coalescing window, milliseconds.
    #[arg(long, env = "SOTTO_RELAY_PUSH_COALESCE_MS")]
    pub push_coalesce_ms: Option<u64>,
    /// Expiry sweep interval, seconds.
    #[arg(long, env = "SOTTO_RELAY_SWEEP_INTERVAL_SECS")]
    pub sweep_interval_secs: Option<u64>,
    /// Memory budget for requests and replies in flight, bytes.
    #[arg(long, env = "SOTTO_RELAY_MEMORY_BUDGET_BYTES")]
    pub memory_budget_bytes: Option<usize>,
    /// Memory budget per connection, bytes.
    #[arg(long, env = "SOTTO_RELAY_CONNECTION_BUDGET_BYTES")]
    pub connection_budget_bytes: Option<usize>,
    /// Memory budget per source IP address, bytes.
    #[arg(long, env = "SOTTO_RELAY_ADDRESS_BUDGET_BYTES")]
    pub address_budget_bytes: Option<usize>,
    /// Most connections at once.
    #[arg(long, env = "SOTTO_RELAY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most connections at once from one IP address.
    #[arg(long, env = "SOTTO_RELAY_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Deadline for a whole request frame, seconds.
    #[arg(long, env = "SOTTO_RELAY_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Deadline for writing a reply, seconds.
    #[arg(long, env = "SOTTO_RELAY_WRITE_TIMEOUT_SECS")]
    pub write_timeout_secs: Option<u64>,
    /// Largest request frame, bytes (bounds batch sends).
    #[arg(long, env = "SOTTO_RELAY_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Most items in one batch send.
    #[arg(long, env = "SOTTO_RELAY_MAX_BATCH_ITEMS")]
    pub max_batch_items: Option<usize>,
    /// Most recipients of one shared send (a group message stored once).
    #[arg(long, env = "SOTTO_RELAY_MAX_SHARED_RECIPIENTS")]
    pub max_shared_recipients: Option<usize>,
    /// Sustained bundle fetch rate for both buckets.
    #[arg(long, env = "SOTTO_RELAY_BUNDLE_RATE_PER_SEC")]
    pub bundle_rate_per_sec: Option<f64>,
    /// Largest signed bundle blob.
    #[arg(long, env = "SOTTO_RELAY_MAX_SIGNED_BUNDLE_BYTES")]
    pub max_signed_bundle_bytes: Option<usize>,
    /// Largest one-time prekey item.
    #[arg(long, env = "SOTTO_RELAY_MAX_PREKEY_BYTES")]
    pub max_prekey_bytes: Option<usize>,
    /// Most stored one-time prekeys per device and kind.
    #[arg(long, env = "SOTTO_RELAY_MAX_ONE_TIME_PREKEYS")]
    pub max_one_time_prekeys: Option<usize>,
    /// Push a count to the owner when fewer than this many remain.
    #[arg(long, env = "SOTTO_RELAY_PREKEYS_LOW_THRESHOLD")]
    pub prekeys_low_threshold: Option<u32>,
    /// Largest device-list body.
    #[arg(long, env = "SOTTO_RELAY_MAX_DEVICE_LIST_BYTES")]
    pub max_device_list_bytes: Option<usize>,
    /// QUIC idle timeout; clients keep alive every 10 s.
    #[arg(long, env = "SOTTO_RELAY_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Most concurrent request streams per connection.
    #[arg(long, env = "SOTTO_RELAY_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
}

/// How the relay writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// Defaults, then the TOML file named by `flags.config`, then the flags.
    pub fn load(flags: &Flags) -> Result<Self> {
        let mut c = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)?;
                toml::from_str(&text).map_err(|e| RelayError::Config(e.to_string()))?
            }
            None => Config::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = flags.$f.clone() { c.$f = v.into(); } )* };
        }
        set!(
            listen,
            data_dir,
            max_envelope_bytes,
            mailbox_max_envelopes,
            mailbox_max_bytes,
            envelope_ttl_secs,
            blob_ttl_secs,
            max_blob_bytes,
            send_rate_per_sec,
            send_burst,
            source_send_rate_per_sec,
            source_send_burst,
            registration_burst,
            ephemeral_burst,
            ephemeral_rate_per_sec,
            stranger_max_envelopes,
            stranger_max_bytes,
            bundle_requester_burst,
            bundle_target_burst,
            push_coalesce_ms,
            sweep_interval_secs,
            memory_budget_bytes,
            connection_budget_bytes,
            address_budget_bytes,
            max_connections,
            max_connections_per_ip,
            request_timeout_secs,
            write_timeout_secs,
            max_frame_bytes,
            max_batch_items,
            max_shared_recipients,
            bundle_rate_per_sec,
            max_signed_bundle_bytes,
            max_prekey_bytes,
            max_one_time_prekeys,
            prekeys_low_threshold,
            max_device_list_bytes,
            idle_timeout_secs,
            max_concurrent_streams
        );
        if flags.cert.is_some() {
            c.cert = flags.cert.clone();
        }
        if flags.key.is_some() {
            c.key = flags.key.clone();
        }
        if flags.metrics_listen.is_some() {
            c.metrics_listen = flags.metrics_listen;
        }
        if flags.no_metrics {
            c.metrics_listen = None;
        }
        if flags.webhook_url.is_some() {
            c.webhook_url = flags.webhook_url.clone();
        }
        c.validate()?;
        Ok(c)
    }

    /// Rejects inconsistent limits.
    pub fn validate(&self) -> Result<()> {
        if self.max_frame_bytes < self.max_envelope_bytes + 1024 {
            return Err(RelayError::Config(
                "max_frame_bytes must exceed max_envelope_bytes + 1024".into(),
            ));
        }
        if self.request_timeout_secs == 0 || self.write_timeout_secs == 0 {
            return Err(RelayError::Config("deadlines must be positive".into()));
        }
        if self.envelope_ttl_secs == 0 || self.blob_ttl_secs == 0 || self.sweep_interval_secs == 0 {
            return Err(RelayError::Config(
                "TTLs and sweep interval must be positive".into(),
            ));
        }
        if self.connection_budget_bytes < self.max_frame_bytes
            || self.address_budget_bytes < self.connection_budget_bytes
            || self.memory_budget_bytes < self.address_budget_bytes
        {
            return Err(RelayError::Config(
                "memory budgets must hold one largest frame (connection) and one connection (relay)"
                    .into(),
            ));
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return Err(RelayError::Config(
                "connection caps must be positive".into(),
            ));
        }
        // A shared send: the payload and, per recipient, a mailbox and a
        // token with their protobuf framing (70 bytes).
        if self.max_frame_bytes
            < self.max_envelope_bytes + self.max_shared_recipients.saturating_mul(70) + 1024
        {
            return Err(RelayError::Config(
                "max_frame_bytes must hold a shared send to max_shared_recipients".into(),
            ));
        }
        if self.max_concurrent_streams == 0
            || self.max_batch_items == 0
            || self.max_shared_recipients == 0
        {
            return Err(RelayError::Config(
                "stream and batch limits must be positive".into(),
            ));
        }
        if self.send_burst == 0
            || self.source_send_burst == 0
            || self.registration_burst == 0
            || self.ephemeral_burst == 0
            || self.bundle_requester_burst == 0
            || self.bundle_target_burst == 0
        {
            return Err(RelayError::Config("bursts must be positive".into()));
        }
        for (name, rate) in [
            ("send_rate_per_sec", self.send_rate_per_sec),
            ("source_send_rate_per_sec", self.source_send_rate_per_sec),
            ("ephemeral_rate_per_sec", self.ephemeral_rate_per_sec),
            ("bundle_rate_per_sec", self.bundle_rate_per_sec),
        ] {
            // Also refuses NaN and infinity (a limit that never refills or
            // never limits is a typo, not a setting).
            if !(rate.is_finite() && rate > 0.0) {
                return Err(RelayError::Config(format!(
                    "{name} must be a positive number (got {rate})"
                )));
            }
        }
        if self.max_envelope_bytes == 0
            || self.mailbox_max_envelopes == 0
            || self.mailbox_max_bytes == 0
            || self.max_blob_bytes == 0
            || self.max_one_time_prekeys == 0
            || self.max_signed_bundle_bytes == 0
            || self.max_prekey_bytes == 0
            || self.max_device_list_bytes == 0
            || self.idle_timeout_secs == 0
        {
            return Err(RelayError::Config(
                "sizes, quotas and the idle timeout must be positive".into(),
            ));
        }
        if let Some(url) = &self.webhook_url {
            if !url.starts_with("http://") {
                return Err(RelayError::Config("webhook_url must be http://".into()));
            }
        }
        Ok(())
    }

    /// Certificate path (explicit or in the data dir).
    pub fn cert_path(&self) -> PathBuf {
        self.cert
            .clone()
            .unwrap_or_else(|| self.data_dir.join("cert.der"))
    }

    /// Key path (explicit or in the data dir).
    pub fn key_path(&self) -> PathBuf {
        self.key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("key.der"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_override_toml_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("relay.toml");
        std::fs::write(&p, "envelope_ttl_secs = 5\nmax_envelope_bytes = 1000\n").unwrap();
        let flags = Flags::parse_from([
            "sotto-relay",
            "--config",
            p.to_str().unwrap(),
            "--max-envelope-bytes",
            "2000",
        ]);
        let c = Config::load(&flags).unwrap();
        assert_eq!(c.envelope_ttl_secs, 5);
        assert_eq!(c.max_envelope_bytes, 2000);
        assert_eq!(
            c.mailbox_max_envelopes,
            Config::default().mailbox_max_envelopes
        );
    }

    #[test]
    fn unknown_keys_and_bad_limits_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("relay.toml");
        std::fs::write(&p, "no_such_key = 1\n").unwrap();
        let flags = Flags::parse_from(["sotto-relay", "--config", p.to_str().unwrap()]);
        assert!(Config::load(&flags).is_err());
        let flags = Flags::parse_from(["sotto-relay", "--max-envelope-bytes", "99999999"]);
        assert!(Config::load(&flags).is_err());
    }

    /// `relay/deploy/sotto-relay.toml` names every key: uncommented, it
    /// parses, validates and equals the defaults (but for the two keys a
    /// service changes and the three without a default).
    #[test]
    fn the_sample_configuration_names_every_key_and_is_valid() {
        let sample = include_str!("../../deploy/sotto-relay.toml");
        let mut uncommented = String::new();
        for line in sample.lines() {
            let Some(rest) = line.strip_prefix("# ") else {
                continue;
            };
            let Some((key, value)) = rest.split_once(" = ") else {
                continue;
            };
            if !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                continue;
            }
            let value = value.trim_end_matches("(no default)").trim();
            if value.is_empty() {
                continue;
            }
            uncommented.push_str(&format!("{key} = {value}\n"));
        }
        let parsed: Config = toml::from_str(&uncommented).unwrap();
        parsed.validate().unwrap();
        let defaults = toml::to_string(&Config::default()).unwrap();
        for line in defaults.lines() {
            let key = line.split(" = ").next().unwrap();
            assert!(
                uncommented
                    .lines()
                    .any(|l| l.starts_with(&format!("{key} = "))),
                "the sample lacks {key}"
            );
        }
        for key in ["cert", "key", "webhook_url"] {
            assert!(
                uncommented.contains(&format!("{key} = ")),
                "the sample lacks {key}"
            );
        }
    }

    #[test]
    fn every_option_is_read_from_the_environment_and_ranges_are_checked() {
        let flags = Flags::try_parse_from(["sotto-relay"]).unwrap();
        assert!(Config::load(&flags).is_ok());
        // Negative, zero, NaN and infinite rates are refused with the key named.
        for bad in ["-5", "0", "NaN", "inf"] {
            let arg = format!("--bundle-rate-per-sec={bad}");
            let flags = Flags::parse_from(["sotto-relay", arg.as_str()]);
            let e = Config::load(&flags).unwrap_err().to_string();
            assert!(e.contains("bundle_rate_per_sec"), "{bad}: {e}");
        }
        // Each flag has its SOTTO_RELAY_ variable.
        let help = <Flags as clap::CommandFactory>::command();
        for arg in help.get_arguments() {
            let id = arg.get_id().as_str();
            if ["check_config", "help", "version"].contains(&id) {
                continue;
            }
            let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or("");
            assert_eq!(env, format!("SOTTO_RELAY_{}", id.to_uppercase()), "{id}");
        }
    }
}
