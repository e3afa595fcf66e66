//! From an HTTP request to a typed [`VmmRequest`] and back: each resource's paths have a small
//! function that parses the body into the request's model type, the [`Dispatch`] carries it to
//! the VMM, and [`crate::fault::error_response`] is the one place an error becomes a status and a
//! `fault_message`.

use std::sync::Arc;

use model::api::{
    Drive, InstanceActionInfo, NetworkInterface, PartialDrive, PartialNetworkInterface, VmState,
};
use model::control::{ControlError, Dispatch, VmmRequest, VmmResponse};
use serde::de::DeserializeOwned;

use crate::fault::error_response;
use crate::http::{Method, Request, Response};

/// Counts each answered request (the metrics' API groups); implemented by the metrics writer.
pub trait RequestCounter: Send + Sync {
    /// `request` was answered with `status`.
    fn count(&self, request: &Request, status: u16);
}

/// Routes requests to the VMM. Holds no VM state (that lives on the VMM thread), so any number of
/// connection threads share one router.
pub struct Router {
    vmm: Arc<dyn Dispatch>,
    counter: Option<Arc<dyn RequestCounter>>,
}

/// What routing decided: a request for the VMM, or an answer the router gives itself.
enum Routed {
    Vmm(VmmRequest),
    Local(Response),
}

type Route = Result<Routed, ControlError>;

impl Router {
    /// A router sending its requests to `vmm`, counting them into `counter` if given.
    pub fn new(vmm: Arc<dyn Dispatch>, counter: Option<Arc<dyn RequestCounter>>) -> Router {
        Router { vmm, counter }
    }

    /// Answers one request. Never panics on client input.
    pub fn handle(&self, request: &Request) -> Response {
        let answer = route(request).and_then(|routed| match routed {
            Routed::Local(response) => Ok(response),
            Routed::Vmm(vmm_request) => self.vmm.dispatch(vmm_request).map(success_response),
        });
        let response = answer.unwrap_or_else(|e| error_response(&e));
        if let Some(counter) = &self.counter {
            counter.count(request, response.status);
        }
        response
    }
}

/// A successful answer as HTTP: 204, or 200 with the JSON body.
fn success_response(response: VmmResponse) -> Response {
    match response {
        VmmResponse::NoContent => Response::no_content(),
        VmmResponse::InstanceInfo(info) => Response::json(200, &info),
        VmmResponse::MachineConfiguration(config) => Response::json(200, &config),
        VmmResponse::FullConfig(config) => Response::json(200, &config),
        VmmResponse::Balloon(balloon) => Response::json(200, &balloon),
        VmmResponse::BalloonStats(stats) => Response::json(200, &stats),
        VmmResponse::Mmds(value) => Response::json(200, &value),
    }
}

/// The request a method and path name, by resource.
fn route(request: &Request) -> Route {
    let segments = request.segments();
    let body = &request.body[..];
    match segments.as_slice() {
        [] => instance(request.method),
        ["version"] => version(request.method),
        ["boot-source"] => boot_source(request.method, body),
        ["machine-config"] => machine_config(request.method, body),
        ["drives", id] => drives(request.method, id, body),
        ["network-interfaces", id] => network_interfaces(request.method, id, body),
        ["vsock"] => put_only(request.method, body, VmmRequest::PutVsock),
        ["entropy"] => put_only(request.method, body, VmmRequest::PutEntropy),
        ["balloon"] => balloon(request.method, body),
        ["balloon", "statistics"] => balloon_statistics(request.method, body),
        ["vm", "config"] => get_only(request.method, VmmRequest::GetVmConfig),
        ["vm"] => vm(request.method, body),
        ["actions"] => actions(request.method, body),
        ["snapshot", "create"] => put_only(request.method, body, VmmRequest::CreateSnapshot),
        ["snapshot", "load"] => put_only(request.method, body, VmmRequest::LoadSnapshot),
        ["logger"] => put_only(request.method, body, VmmRequest::PutLogger),
        ["metrics"] => put_only(request.method, body, VmmRequest::PutMetrics),
        ["mmds"] => mmds(request.method, body),
        ["mmds", "config"] => put_only(request.method, body, VmmRequest::PutMmdsConfig),
        _ => not_implemented(request.method, &segments),
    }
    .unwrap_or_else(|| Err(invalid_path(request)))
}

/// `None`: no such method on this path.
type MaybeRoute = Option<Route>;

fn vmm(request: VmmRequest) -> MaybeRoute {
    Some(Ok(Routed::Vmm(request)))
}

fn parsed<T: DeserializeOwned>(body: &[u8], to_request: impl FnOnce(T) -> VmmRequest) -> MaybeRoute {
    Some(parse_body(body).map(|value| Routed::Vmm(to_request(value))))
}

fn put_only<T: DeserializeOwned>(method: Method, body: &[u8], to_request: fn(T) -> VmmRequest) -> MaybeRoute {
    match method {
        Method::Put => parsed(body, to_request),
        _ => None,
    }
}

fn get_only(method: Method, request: VmmRequest) -> MaybeRoute {
    match method {
        Method::Get => vmm(request),
        _ => None,
    }
}

fn instance(method: Method) -> MaybeRoute {
    get_only(method, VmmRequest::GetInstanceInfo)
}

/// `GET /version`: the router knows it without asking the VMM.
fn version(method: Method) -> MaybeRoute {
    let body = serde_json::json!({
        "firecracker_version": model::api::FIRECRACKER_VERSION,
        "kestrel_version": env!("CARGO_PKG_VERSION"),
    });
    (method == Method::Get).then(|| Ok(Routed::Local(Response::json(200, &body))))
}

fn boot_source(method: Method, body: &[u8]) -> MaybeRoute {
    put_only(method, body, VmmRequest::PutBootSource)
}

fn machine_config(method: Method, body: &[u8]) -> MaybeRoute {
    match method {
        Method::Get => vmm(VmmRequest::GetMachineConfig),
        Method::Put => parsed(body, VmmRequest::PutMachineConfig),
        Method::Patch => parsed(body, VmmRequest::PatchMachineConfig),
    }
}

fn drives(method: Method, id: &str, body: &[u8]) -> MaybeRoute {
    let id = id.to_owned();
    match method {
        Method::Put => parsed(body, |drive: Drive| VmmRequest::PutDrive { id, drive: Box::new(drive) }),
        Method::Patch => parsed(body, |update: PartialDrive| VmmRequest::PatchDrive { id, update }),
        Method::Get => None,
    }
}

fn network_interfaces(method: Method, id: &str, body: &[u8]) -> MaybeRoute {
    let id = id.to_owned();
    match method {
        Method::Put => parsed(body, |interface: NetworkInterface| VmmRequest::PutNetworkInterface {
            id,
            interface: Box::new(interface),
        }),
        Method::Patch => parsed(body, |update: PartialNetworkInterface| VmmRequest::PatchNetworkInterface {
            id,
            update: Box::new(update),
        }),
        Method::Get => None,
    }
}

/// After the start, the configuration follows every change made through PATCH: `GET /balloon`
/// returns the target and interval the running device has.
fn balloon(method: Method, body: &[u8]) -> MaybeRoute {
    match method {
        Method::Get => vmm(VmmRequest::GetBalloon),
        Method::Put => parsed(body, VmmRequest::PutBalloon),
        Method::Patch => parsed(body, VmmRequest::PatchBalloon),
    }
}

fn balloon_statistics(method: Method, body: &[u8]) -> MaybeRoute {
    match method {
        Method::Get => vmm(VmmRequest::GetBalloonStats),
        Method::Patch => parsed(body, VmmRequest::PatchBalloonStats),
        Method::Put => None,
    }
}

fn vm(method: Method, body: &[u8]) -> MaybeRoute {
    match method {
        Method::Patch => parsed(body, |VmState { state }| VmmRequest::PatchVm(state)),
        _ => None,
    }
}

fn actions(method: Method, body: &[u8]) -> MaybeRoute {
    put_only(method, body, |InstanceActionInfo { action_type }| VmmRequest::Action(action_type))
}

fn mmds(method: Method, body: &[u8]) -> MaybeRoute {
    match method {
        Method::Get => vmm(VmmRequest::GetMmds),
        Method::Put => parsed(body, VmmRequest::PutMmds),
        Method::Patch => parsed(body, VmmRequest::PatchMmds),
    }
}

/// Firecracker's endpoints Kestrel does not serve yet: a clear 400 rather than "invalid path".
fn not_implemented(method: Method, segments: &[&str]) -> MaybeRoute {
    use Method::{Get, Patch, Put};
    let what = match (method, segments) {
        (Put, ["cpu-config"]) => "CPU configuration",
        (Put, ["serial"]) => "The serial endpoint (use --serial)",
        (Put | Patch, ["pmem", _]) => "pmem devices",
        (Put | Patch | Get, ["hotplug", "memory"]) => "Memory hotplug",
        (Put | Get | Patch, ["balloon", "hinting", _]) => "Balloon free page hinting",
        _ => return None,
    };
    Some(Err(ControlError::NotYet(what)))
}

fn invalid_path(request: &Request) -> ControlError {
    ControlError::InvalidPath {
        method: request.method.as_str(),
        path: request.path.chars().take(200).collect(),
    }
}

/// A JSON body, or why it is not one of the expected shape.
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ControlError> {
    if body.is_empty() {
        return Err(ControlError::MissingBody);
    }
    // Every body is an object; serde would also read a struct from an array of its fields in
    // order, so `[3, "v.sock"]` would configure a vsock.
    if body.iter().find(|b| !b" \t\r\n".contains(b)) != Some(&b'{') {
        return Err(ControlError::InvalidBody("expected a JSON object".into()));
    }
    serde_json::from_slice(body).map_err(|e| ControlError::InvalidBody(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use model::api::{
        ActionType, InstanceInfo, InstanceState, KestrelInstanceInfo, RateLimiterConfig, TokenBucket,
    };

    use super::*;

    /// Records what reaches the VMM and answers `GET /` (and 204 to the rest).
    #[derive(Default)]
    struct Recorder(Mutex<Vec<VmmRequest>>);

    impl Dispatch for Recorder {
        fn dispatch(&self, request: VmmRequest) -> Result<VmmResponse, ControlError> {
            let answer = match request {
                VmmRequest::GetInstanceInfo => VmmResponse::InstanceInfo(InstanceInfo {
                    app_name: "Kestrel".into(),
                    id: "t".into(),
                    state: InstanceState::Running,
                    vmm_version: "0".into(),
                    kestrel: KestrelInstanceInfo::default(),
                }),
                _ => VmmResponse::NoContent,
            };
            self.0.lock().unwrap().push(request);
            Ok(answer)
        }
    }

    fn handle(router: &Router, method: Method, path: &str, body: &str) -> Response {
        router.handle(&Request { method, path: path.into(), body: body.as_bytes().to_vec(), close: false })
    }

    #[test]
    fn requests_reach_the_vmm_typed_and_refusals_do_not() {
        let recorder = Arc::new(Recorder::default());
        let router = Router::new(recorder.clone(), None);
        let info = handle(&router, Method::Get, "/", "");
        assert_eq!(info.status, 200);
        assert!(!info.body.unwrap().contains("x-kestrel\":{\"operation"), "no operation, no field");
        assert_eq!(
            handle(&router, Method::Put, "/actions", r#"{"action_type": "FlushMetrics"}"#).status,
            204
        );
        let patch = r#"{"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 10, "refill_time": 100}}}"#;
        assert_eq!(handle(&router, Method::Patch, "/network-interfaces/eth0", patch).status, 204);
        // Answered by the router alone: the version, bad bodies, unknown paths, endpoints not served.
        assert_eq!(handle(&router, Method::Get, "/version", "").status, 200);
        for (method, path, body) in [
            (Method::Put, "/actions", "[]"),
            (Method::Put, "/actions", ""),
            (Method::Get, "/actions", ""),
            (Method::Put, "/cpu-config", "{}"),
            (Method::Get, "/drives/a", ""),
        ] {
            assert_eq!(handle(&router, method, path, body).status, 400, "{path}");
        }
        assert_eq!(
            *recorder.0.lock().unwrap(),
            [
                VmmRequest::GetInstanceInfo,
                VmmRequest::Action(ActionType::FlushMetrics),
                VmmRequest::PatchNetworkInterface {
                    id: "eth0".into(),
                    update: Box::new(PartialNetworkInterface {
                        iface_id: "eth0".into(),
                        rx_rate_limiter: None,
                        tx_rate_limiter: Some(RateLimiterConfig {
                            bandwidth: None,
                            ops: Some(TokenBucket { size: 10, one_time_burst: None, refill_time: 100 }),
                        }),
                    }),
                },
            ]
        );
    }
}
