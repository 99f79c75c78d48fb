use std::sync::Arc;

use clap::Parser;
use switchboard::auth::{Auth, generate_secret};
use switchboard::config::{Config, LogFormat};
use switchboard::http::{AppState, app};
use switchboard::store::CallStore;
use switchboard::{bridge, media};
use tracing::info;

fn main() {
    let config = Config::parse();
    if let Err(message) = run(config) {
        eprintln!("switchboard: {message}");
        std::process::exit(1);
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(config: Config) -> Result<(), String> {
    init_logging(config.log_format);
    let host_ip = config.advertised_ip()?;

    let (secret, dev_mode) = match &config.jwt_secret {
        Some(s) if s.len() >= 16 => (s.clone(), false),
        Some(_) => return Err("--jwt-secret must be at least 16 characters".into()),
        None => (generate_secret(), true),
    };
    if dev_mode {
        println!(
            "dev mode: no --jwt-secret given; tokens are signed with the generated secret {secret}"
        );
        println!(
            "dev mode: POST /api/dev/token hands out tokens; do not expose this server publicly"
        );
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
        let (addr, _thread) = media::spawn(i, bind, host_ip, inbox)
            .map_err(|e| format!("cannot bind the media port {bind}: {e}"))?;
        info!(%addr, advertised = %host_ip, "media worker {i} listening");
        workers.push(handle);
    }

    let state = AppState {
        config: Arc::new(config.clone()),
        auth,
        workers: Arc::new(workers),
        store: store.clone(),
    };
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .map_err(|e| format!("cannot listen on --http-addr {}: {e}", config.http_addr))?;
        info!(addr = %config.http_addr, dev_mode, "http listening; open http://{}", config.http_addr);
        axum::serve(listener, app(state))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| format!("http server failed: {e}"))
    })?;
    store
        .flush()
        .map_err(|e| format!("cannot flush the call store: {e}"))?;
    Ok(())
}
