//! The outbound listener: apps call it for other services. Each request is
//! routed to a service, a replica is picked by the worker's balancer, the
//! call is forwarded, its outcome reported to the replica, and the answer
//! streamed back.

mod route;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_web::dev::Server;
use actix_web::http::header::{HeaderValue, HOST};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use log::{debug, warn};
use prometheus::IntGauge;

pub use route::{resolve, Route};

use crate::balance::{Balancer, Pick, PickError};
use crate::config::Config;
use crate::error::ProxyError;
use crate::forward::{self, SendError, Upstream};
use crate::metrics::{method_label, Metrics};
use crate::replica::{Answer, UpstreamError};
use crate::service::{Service, ServiceTable};

const LISTENER: &str = "outbound";

/// What one worker needs to proxy: its client and balancer, and the shared table.
struct Worker {
    client: awc::Client,
    balancer: Addr<Balancer>,
    table: Arc<ServiceTable>,
    metrics: Arc<Metrics>,
    in_progress: IntGauge,
}

/// Binds the outbound listener; the server runs once awaited or spawned.
pub fn server(
    config: &Config,
    table: Arc<ServiceTable>,
    metrics: Arc<Metrics>,
    shutdown_secs: u64,
) -> io::Result<(Server, Vec<SocketAddr>)> {
    let connect_timeout = config.defaults.connect_timeout;
    let server = HttpServer::new(move || {
        let worker = Worker {
            client: forward::client(connect_timeout),
            balancer: Balancer::new().start(),
            table: Arc::clone(&table),
            in_progress: metrics
                .http_requests_in_progress
                .with_label_values(&[LISTENER]),
            metrics: Arc::clone(&metrics),
        };
        App::new()
            .app_data(web::Data::new(worker))
            .default_service(web::to(proxy))
    })
    .disable_signals()
    .shutdown_timeout(shutdown_secs)
    .bind(config.listeners.outbound)?;
    let addrs = server.addrs();
    Ok((server.run(), addrs))
}

async fn proxy(req: HttpRequest, payload: web::Payload, worker: web::Data<Worker>) -> HttpResponse {
    let started = Instant::now();
    worker.in_progress.inc();
    let request_id = forward::request_id(&req);
    let host = req.headers().get(HOST).and_then(|h| h.to_str().ok());
    let route = resolve(&worker.table, req.uri().host(), host, req.uri().path());
    let (service, response) = match route {
        None => {
            debug!(
                "request {}: no service for {}",
                id_str(&request_id),
                req.uri()
            );
            (
                None,
                ProxyError::UnknownService.response(None, id_str(&request_id)),
            )
        }
        Some(route) => {
            let service = Arc::clone(route.service);
            let (path, keep_host) = (route.path.to_string(), route.keep_host);
            let response = call(
                &worker,
                &service,
                &path,
                keep_host,
                &req,
                payload,
                &request_id,
            )
            .await;
            (Some(service), response)
        }
    };
    let service_label = service.as_deref().map_or("unknown", |s| &*s.name);
    let metrics = &worker.metrics;
    metrics
        .http_requests
        .with_label_values(&[
            LISTENER,
            service_label,
            method_label(req.method()),
            response.status().as_str(),
        ])
        .inc();
    metrics
        .http_request_duration
        .with_label_values(&[LISTENER, service_label])
        .observe(started.elapsed().as_secs_f64());
    worker.in_progress.dec();
    response
}

async fn call(
    worker: &Worker,
    service: &Arc<Service>,
    path: &str,
    keep_host: bool,
    req: &HttpRequest,
    payload: web::Payload,
    request_id: &HeaderValue,
) -> HttpResponse {
    let id = id_str(request_id);
    let name = &*service.name;
    let pick = worker
        .balancer
        .send(Pick {
            service: Arc::clone(service),
        })
        .await;
    let mut lease = match pick {
        Ok(Ok(lease)) => lease,
        Ok(Err(refused)) => {
            let message = match refused {
                PickError::NoReplicas => format!("service {name} has no replicas"),
                PickError::AllRefused => {
                    format!("every replica of {name} has its circuit breaker open")
                }
            };
            warn!("request {id}: 503: {message}");
            return ProxyError::NoHealthyReplica(message).response(Some(name), id);
        }
        Err(err) => {
            let message = format!("the balancer of this worker is gone: {err}");
            warn!("request {id}: 503: {message}");
            return ProxyError::NoHealthyReplica(message).response(Some(name), id);
        }
    };
    let policy = &service.policy;
    let endpoint = Arc::clone(lease.endpoint());
    let upstream = Upstream {
        address: &endpoint.address,
        path,
        keep_host,
        timeout: policy.per_try_timeout.min(policy.timeout),
    };
    let started = Instant::now();
    match forward::send(&worker.client, upstream, req, payload, request_id).await {
        Ok(response) => {
            let status = response.status();
            lease.report(Answer::Status(status.as_u16()));
            worker
                .metrics
                .upstream_request_duration
                .with_label_values(&[name])
                .observe(started.elapsed().as_secs_f64());
            debug!(
                "request {id}: {name}/{} answered {status}",
                endpoint.address
            );
            forward::respond(response, lease)
        }
        Err(SendError::BadRequest(message)) => {
            lease.report(Answer::Cancelled);
            warn!("request {id}: 400: {message}");
            ProxyError::BadRequest(message).response(Some(name), id)
        }
        Err(SendError::Upstream(kind, detail)) => {
            lease.report(Answer::Error(kind));
            let replica = format!("{name}/{}", endpoint.address);
            let error = match kind {
                UpstreamError::Connect => {
                    ProxyError::UpstreamConnect(format!("cannot connect to {replica}: {detail}"))
                }
                UpstreamError::Timeout => ProxyError::Timeout(format!(
                    "no answer from {replica} within {}ms",
                    upstream_timeout_ms(service)
                )),
                UpstreamError::Protocol => {
                    ProxyError::UpstreamProtocol(format!("{replica} broke the exchange: {detail}"))
                }
            };
            warn!(
                "request {id}: {}: {}",
                error.status().as_u16(),
                error.message()
            );
            error.response(Some(name), id)
        }
    }
}

fn upstream_timeout_ms(service: &Service) -> u128 {
    service
        .policy
        .per_try_timeout
        .min(service.policy.timeout)
        .as_millis()
}

fn id_str(request_id: &HeaderValue) -> &str {
    request_id.to_str().unwrap_or("-")
}
