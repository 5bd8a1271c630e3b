//! The mesh proxies beside the application (Istio, Linkerd; a sidecar container or an
//! injection annotation): when each stops, its events on the timeline, and whether it stays
//! until lastcall is done.

use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

use super::workload::{pre_stop, pre_stop_of};
use crate::plan::value::{ceil_secs, scalar, secs};
use crate::plan::{Event, Finding, Service, Severity};

/// Istio's drain when `terminationDrainDuration` is not set.
const ISTIO_DRAIN: Duration = Duration::from_secs(5);
/// Linkerd's `config.linkerd.io/shutdown-grace-period` when not set.
const LINKERD_GRACE: Duration = Duration::from_secs(120);

/// A mesh proxy beside the application.
#[derive(Debug)]
pub(super) enum Proxy {
    Istio {
        /// Stopped after the application (`restartPolicy: Always` init container).
        native: bool,
        /// The container is in the file; `false` when only the injection label asks for it,
        /// and the injector, not the file, decides whether it is a native sidecar.
        seen: bool,
        pre_stop: Duration,
        drain: Duration,
        /// `EXIT_ON_ZERO_ACTIVE_CONNECTIONS`: the proxy stays while connections are open.
        exit_on_zero: bool,
    },
    Linkerd {
        native: bool,
        /// `config.alpha.linkerd.io/proxy-wait-before-exit-seconds`, or the injected proxy's
        /// preStop sleep.
        wait: Duration,
        /// `config.linkerd.io/shutdown-grace-period`.
        grace: Duration,
    },
}

/// The mesh proxies in the pod: a container (regular or native sidecar) or an injection
/// annotation for one not injected yet.
pub(super) fn proxies(pod: &Yaml, meta: &Yaml, findings: &mut Vec<Finding>) -> Vec<Proxy> {
    let annotation =
        |key: &str| scalar(&meta["annotations"][key]).or_else(|| scalar(&meta["labels"][key]));
    let find = |name: &str| -> Option<(&Yaml, bool)> {
        let regular = pod["containers"]
            .as_vec()
            .into_iter()
            .flatten()
            .find(|c| c["name"].as_str() == Some(name));
        let native = pod["initContainers"]
            .as_vec()
            .into_iter()
            .flatten()
            .find(|c| {
                c["name"].as_str() == Some(name) && c["restartPolicy"].as_str() == Some("Always")
            });
        regular.map(|c| (c, false)).or(native.map(|c| (c, true)))
    };
    let mut proxies = Vec::new();

    let istio = find("istio-proxy");
    if istio.is_some() || annotation("sidecar.istio.io/inject").as_deref() == Some("true") {
        let container = istio.map_or(&Yaml::BadValue, |(c, _)| c);
        let proxy_env = |key: &str| {
            container["env"]
                .as_vec()
                .into_iter()
                .flatten()
                .find(|v| v["name"].as_str() == Some(key))
                .and_then(|v| scalar(&v["value"]))
        };
        // `proxy.istio.io/config` (the annotation) and `PROXY_CONFIG` (what injection
        // writes into the container) are both a ProxyConfig, in YAML or JSON.
        let configs: Vec<Yaml> = [
            annotation("proxy.istio.io/config"),
            proxy_env("PROXY_CONFIG"),
        ]
        .into_iter()
        .flatten()
        .filter_map(|text| YamlLoader::load_from_str(&text).ok()?.into_iter().next())
        .collect();
        let mut drain = ISTIO_DRAIN;
        if let Some(secs) =
            proxy_env("TERMINATION_DRAIN_DURATION_SECONDS").and_then(|s| s.parse::<u64>().ok())
        {
            drain = Duration::from_secs(secs);
        }
        let mut exit_on_zero =
            proxy_env("EXIT_ON_ZERO_ACTIVE_CONNECTIONS").as_deref() == Some("true");
        for config in &configs {
            if let Some(text) = scalar(&config["terminationDrainDuration"]) {
                match humantime::parse_duration(&text) {
                    Ok(d) => drain = d,
                    Err(e) => findings.push(Finding {
                        severity: Severity::Error,
                        check: "sidecar",
                        problem: format!("proxy.istio.io/config terminationDrainDuration {text:?} is not a duration ({e})"),
                        fix: "set terminationDrainDuration to a duration such as \"30s\"".into(),
                    }),
                }
            }
            if scalar(&config["proxyMetadata"]["EXIT_ON_ZERO_ACTIVE_CONNECTIONS"]).as_deref()
                == Some("true")
            {
                exit_on_zero = true;
            }
        }
        let native = istio.is_some_and(|(_, native)| native)
            || annotation("sidecar.istio.io/nativeSidecar").as_deref() == Some("true");
        let mut ignored = Vec::new();
        proxies.push(Proxy::Istio {
            native,
            seen: istio.is_some(),
            pre_stop: pre_stop(&container["lifecycle"]["preStop"], &mut ignored),
            drain,
            exit_on_zero,
        });
    }

    let linkerd = find("linkerd-proxy");
    if linkerd.is_some() || annotation("linkerd.io/inject").as_deref() == Some("enabled") {
        let native = linkerd.is_some_and(|(_, native)| native)
            || annotation("config.alpha.linkerd.io/proxy-enable-native-sidecar").as_deref()
                == Some("true");
        // The annotation becomes the injected proxy's preStop sleep; either may be in the file.
        let mut ignored = Vec::new();
        let wait = annotation("config.alpha.linkerd.io/proxy-wait-before-exit-seconds")
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(Duration::ZERO, Duration::from_secs)
            .max(linkerd.map_or(Duration::ZERO, |(c, _)| pre_stop_of(c, &mut ignored)));
        let grace = match annotation("config.linkerd.io/shutdown-grace-period") {
            None => LINKERD_GRACE,
            Some(text) => match humantime::parse_duration(&text) {
                Ok(d) => d,
                Err(e) => {
                    findings.push(Finding {
                        severity: Severity::Error,
                        check: "sidecar",
                        problem: format!("config.linkerd.io/shutdown-grace-period {text:?} is not a duration ({e})"),
                        fix: "set config.linkerd.io/shutdown-grace-period to a duration such as \"30s\"".into(),
                    });
                    LINKERD_GRACE
                }
            },
        };
        proxies.push(Proxy::Linkerd {
            native,
            wait,
            grace,
        });
    }
    proxies
}

impl Proxy {
    fn name(&self) -> &'static str {
        match self {
            Proxy::Istio { .. } => "istio-proxy",
            Proxy::Linkerd { .. } => "linkerd-proxy",
        }
    }

    /// The proxy's own events; `app_end` is when lastcall's budget ends.
    pub(super) fn events(&self, app_end: Duration, pod_grace: Duration) -> Vec<Event> {
        let name = self.name();
        match *self {
            Proxy::Istio { native: true, .. } | Proxy::Linkerd { native: true, .. } => vec![Event {
                at: app_end,
                what: format!("{name} (native sidecar): SIGTERM once the application has exited"),
            }],
            Proxy::Istio { pre_stop, drain, exit_on_zero, .. } => {
                let mut events = vec![Event {
                    at: pre_stop,
                    what: format!("{name}: SIGTERM, the proxy drains (terminationDrainDuration {})", secs(drain)),
                }];
                events.push(if exit_on_zero {
                    Event {
                        at: pre_stop + drain,
                        what: format!("{name}: exits once no connection is open (EXIT_ON_ZERO_ACTIVE_CONNECTIONS)"),
                    }
                } else {
                    Event {
                        at: pre_stop + drain,
                        what: format!("{name}: exits; connections through the mesh fail from here"),
                    }
                });
                events
            }
            Proxy::Linkerd { wait, grace, .. } => vec![
                Event {
                    at: wait,
                    what: format!("{name}: SIGTERM, the proxy refuses new connections and waits for open ones (shutdown-grace-period {})", secs(grace)),
                },
                if wait + grace < pod_grace {
                    Event {
                        at: wait + grace,
                        what: format!("{name}: exits at the latest"),
                    }
                } else {
                    Event {
                        at: pod_grace,
                        what: format!("{name}: killed with the pod if still open"),
                    }
                },
            ],
        }
    }

    /// The proxy carries the application's traffic until lastcall is done: it must accept
    /// connections until lastcall stops accepting, and stay until its budget ends (responses
    /// in flight, and the service's own calls through the mesh while it flushes and closes).
    pub(super) fn check(
        &self,
        pre_stop: Duration,
        service: &Service,
        grace: Duration,
        findings: &mut Vec<Finding>,
    ) {
        let b = &service.budget;
        let app_end = pre_stop + b.total;
        let stop_accepting = pre_stop + b.drain_delay;
        let native_fix = "or inject it as a native sidecar (annotation config.alpha.linkerd.io/proxy-enable-native-sidecar: \"true\"), which Kubernetes stops after the application";
        match *self {
            Proxy::Istio { native: true, .. } | Proxy::Linkerd { native: true, .. } => {}
            Proxy::Istio {
                pre_stop: proxy_pre_stop,
                drain,
                exit_on_zero: false,
                seen,
                ..
            } => {
                let exit = proxy_pre_stop + drain;
                if exit < app_end {
                    // Injected at admission, the proxy may be a native sidecar (recent Istio
                    // makes it one where the cluster supports it): the file cannot tell.
                    let (severity, caveat) = if seen {
                        (Severity::Error, "")
                    } else {
                        (
                            Severity::Warning,
                            ", if it is injected as a regular sidecar",
                        )
                    };
                    findings.push(Finding {
                        severity,
                        check: "sidecar",
                        problem: format!(
                            "istio-proxy exits {} after the deletion (terminationDrainDuration {}){caveat}, but lastcall needs it until {} (preStop {} + LASTCALL_BUDGET {}): responses still in flight and the service's own calls through the mesh fail",
                            secs(exit), secs(drain), secs(app_end), secs(pre_stop), secs(b.total)
                        ),
                        fix: format!(
                            "set the pod annotation proxy.istio.io/config: '{{\"terminationDrainDuration\": \"{}s\"}}', or proxyMetadata EXIT_ON_ZERO_ACTIVE_CONNECTIONS: \"true\" there; or inject it as a native sidecar (annotation sidecar.istio.io/nativeSidecar: \"true\"), which Kubernetes stops after the application",
                            ceil_secs(app_end.saturating_sub(proxy_pre_stop)).min(grace.as_secs().max(1))
                        ),
                    });
                }
            }
            Proxy::Istio { .. } => {}
            Proxy::Linkerd {
                wait,
                grace: proxy_grace,
                ..
            } => {
                // Linkerd's proxy refuses every new connection from its SIGTERM on, inbound
                // and the application's own outbound ones alike.
                if wait < app_end {
                    let what = if wait < stop_accepting {
                        format!(
                            "requests still routed to the pod during the drain delay (lastcall accepts until {}) and the application's new outbound calls fail",
                            secs(stop_accepting)
                        )
                    } else {
                        "the application's new outbound calls (a database connection, the telemetry flush) fail while it finishes in-flight work".to_owned()
                    };
                    findings.push(Finding {
                        severity: Severity::Error,
                        check: "sidecar",
                        problem: format!(
                            "linkerd-proxy gets SIGTERM {} after the deletion and refuses new connections from then on (shutdown-grace-period {} only lets open ones finish), but lastcall runs until {} (preStop {} + LASTCALL_BUDGET {}): {what}",
                            secs(wait), secs(proxy_grace), secs(app_end), secs(pre_stop), secs(b.total)
                        ),
                        fix: format!(
                            "set the pod annotation config.alpha.linkerd.io/proxy-wait-before-exit-seconds: \"{}\" (and terminationGracePeriodSeconds to cover it); {native_fix}",
                            ceil_secs(app_end)
                        ),
                    });
                }
            }
        }
    }
}
