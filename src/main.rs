use std::io::{IsTerminal, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use switchboard::api::Calls;
use switchboard::api::live::{consume_media_events, shut_down as shut_down_calls};
use switchboard::auth::{Auth, generate_secret};
use switchboard::config::{Config, LoadError, LogFormat};
use switchboard::http::{AppState, app};
use switchboard::metrics::Metrics;
use switchboard::serve::{self, Connections};
use switchboard::store::CallStore;
use switchboard::{bridge, media};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

fn main() {
    let mut args: Vec<_> = std::env::args_os().collect();
    let healthcheck = args.get(1).is_some_and(|a| a == "healthcheck");
    if healthcheck {
        args.remove(1);
    }
    let config = match Config::load_from(args) {
        Ok(config) => config,
        Err(LoadError::Args(e)) => e.exit(),
        Err(LoadError::File(message)) => {
            eprintln!("switchboard: config file {message}");
            std::process::exit(1);
        }
    };
    let result = if healthcheck {
        check_health(&config)
    } else {
        run(config)
    };
    if let Err(message) = result {
        eprintln!("switchboard: {message}");
        std::process::exit(1);
    }
}

/// Our own info logs; only warnings and errors of the WebRTC stack (it is chatty at info).
const DEFAULT_LOG_FILTER: &str = "info,rtc=warn,rtc_ice=warn,rtc_dtls=error,rtc_sctp=warn";

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // No colour codes in `docker logs` or a log file.
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `switchboard healthcheck`: GET /readyz from the server this configuration describes; for
/// container health checks, where no HTTP client may be installed.
fn check_health(config: &Config) -> Result<(), String> {
    let mut addr = config.http_addr;
    if addr.ip().is_unspecified() {
        let loopback = match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        addr = SocketAddr::new(loopback, addr.port());
    }
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("healthcheck: cannot connect to {addr}: {e}"))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    write!(
        stream,
        "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("healthcheck: cannot send to {addr}: {e}"))?;
    let mut response = String::new();
    // A timeout after the head arrived still leaves the status line in `response`.
    let _ = stream.take(64 * 1024).read_to_string(&mut response);
    let status = response.split(' ').nth(1).unwrap_or("none");
    if status == "200" {
        Ok(())
    } else {
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b.trim());
        Err(format!("healthcheck: GET /readyz answered {status} {body}"))
    }
}

fn run(config: Config) -> Result<(), String> {
    init_logging(config.log_format);
    info!(config = %config.redacted(), "effective configuration");
    // Connections are capped below the open-file limit, so raise it as far as we may first.
    let fd_limit = match serve::raise_fd_limit() {
        Ok(l) => {
            info!(
                soft = l.soft,
                hard = l.hard,
                was = l.before,
                "open-file limit (RLIMIT_NOFILE) raised to its hard limit"
            );
            l.soft
        }
        Err(e) => {
            let soft = serve::fd_soft_limit();
            warn!(error = %e, soft, "cannot raise the open-file limit");
            soft
        }
    };
    let (limits, too_many) = config.connection_limits(fd_limit);
    if let Some(warning) = too_many {
        warn!("{warning}");
    }
    info!(
        max_connections = limits.max_total,
        max_connections_per_ip = limits.max_per_ip,
        header_timeout_secs = limits.header_timeout.as_secs(),
        idle_timeout_secs = limits.idle_timeout.as_secs(),
        "HTTP connection bounds"
    );
    let host_ip = config.advertised_ip()?;

    let (secret, dev_mode) = match &config.jwt_secret {
        Some(s) if s.len() >= 16 => (s.clone(), false),
        Some(_) => return Err("--jwt-secret must be at least 16 characters".into()),
        None => (generate_secret(), true),
    };
    // The generated secret is never printed: whoever reads the log could mint any token.
    if dev_mode && config.dev_allow_remote {
        warn!(
            "dev mode: no --jwt-secret, and --dev-allow-remote: POST /api/dev/token hands out \
             tokens to anyone who reaches this server; never on a public address"
        );
    } else if dev_mode {
        info!(
            "dev mode: no --jwt-secret, tokens are signed with a generated secret (not shown); \
             POST /api/dev/token hands them out to clients on this host only"
        );
    } else if config.dev_allow_remote {
        warn!("--dev-allow-remote has no effect with --jwt-secret (there is no dev mode)");
    }
    let auth = Auth::new(secret.as_bytes(), dev_mode);

    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        format!(
            "cannot create --data-dir {}: {e}",
            config.data_dir.display()
        )
    })?;
    let store = CallStore::open(&config.data_dir).map_err(|e| {
        format!(
            "cannot open the call store in {}: {e}",
            config.data_dir.display()
        )
    })?;

    // Room life-cycle events from every media worker, for the call records.
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(bridge::EVENT_QUEUE);
    let mut workers = Vec::new();
    for i in 0..config.media_workers {
        let (handle, inbox) =
            bridge::channel().map_err(|e| format!("cannot create a media worker: {e}"))?;
        let port = if config.udp_port == 0 {
            0
        } else {
            config.udp_port + i as u16
        };
        let bind = std::net::SocketAddr::new(config.http_addr.ip(), port);
        let (addr, _thread) = media::spawn(
            i,
            bind,
            host_ip,
            config.media_rt_priority,
            media::Limits {
                max_remote_candidates: config.max_remote_candidates,
                media_start_timeout: Duration::from_secs(config.media_start_timeout),
            },
            inbox,
            events_tx.clone(),
        )
        .map_err(|e| format!("cannot bind the media port {bind}: {e}"))?;
        info!(%addr, advertised = %host_ip, "media worker {i} listening");
        workers.push(handle);
    }

    let metrics = Arc::new(Metrics::default());
    let connections = Connections::new(limits, metrics.clone());
    let state = AppState {
        config: Arc::new(config.clone()),
        auth,
        workers: Arc::new(workers),
        store: store.clone(),
        metrics: metrics.clone(),
        calls: Calls::new(config.call_rate_limit),
        whip: Default::default(),
    };
    let grace = Duration::from_secs(config.shutdown_grace);
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        // Handlers go in before the port opens, so a signal can never find the default action.
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
        let mut int =
            signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
        let listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .map_err(|e| format!("cannot listen on --http-addr {}: {e}", config.http_addr))?;
        info!(addr = %config.http_addr, dev_mode, "http listening; open http://{}", config.http_addr);

        // The call records follow the rooms.
        tokio::spawn(consume_media_events(state.clone(), events_rx));

        // `signalled` holds the moment the grace period ends, from the signal on; `stop` closes
        // the listener once the open calls are ended.
        let (signalled_tx, mut signalled) = tokio::sync::watch::channel(None);
        let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
        let calls_state = state.clone();
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            let deadline = tokio::time::Instant::now() + grace;
            let _ = signalled_tx.send(Some(deadline));
            info!(
                grace_secs = grace.as_secs(),
                "{name} received: no new connections; shutting down"
            );
            // Every participant hears `server_shutdown` and leaves (reason `server_shutdown`);
            // the media workers refuse joins from here on.
            for worker in calls_state.workers.iter() {
                if tokio::time::timeout_at(deadline, worker.shutdown()).await.is_err() {
                    warn!("a media worker did not empty its rooms within the grace period");
                }
            }
            // Open calls end as `ended` (`server_shutdown`); their members hear `call_ended`.
            match tokio::time::timeout_at(deadline, shut_down_calls(&calls_state)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => info!(calls = n, "open calls ended for the shutdown"),
                Ok(Err(e)) => warn!(error = e.message, "cannot close the open calls"),
                Err(_) => warn!("the open calls were not all ended within the grace period"),
            }
            let _ = stop_tx.send(true);
        });
        let server = serve::serve(listener, app(state), connections, async move {
            let _ = stop.wait_for(|stop| *stop).await;
        });
        let deadline = async move {
            let at = signalled.wait_for(Option::is_some).await.ok().and_then(|at| *at);
            match at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        // Requests in flight get up to the grace period; WebSocket sessions close themselves
        // after passing on `server_shutdown`.
        tokio::select! {
            () = server => {}
            () = deadline => warn!("shutdown grace elapsed with requests still in flight"),
        }
        let open = metrics.ws_open();
        if open > 0 {
            info!(sessions = open, "closing open WebSocket sessions");
        }
        Ok::<(), String>(())
    })?;
    // Tasks still running (WebSocket sessions, a blocking flush) get one more second.
    runtime.shutdown_timeout(Duration::from_secs(1));
    store
        .flush()
        .map_err(|e| format!("cannot flush the call store: {e}"))?;
    info!("call store flushed; bye");
    Ok(())
}
