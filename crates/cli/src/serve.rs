//! `cutover serve`: the always-on controller.
//!
//! One process (or several replicas sharing a DynamoDB store) that drives
//! every active rollout of the services whose plans are in `--plans DIR`,
//! starts rollouts from the plans' `[trigger]`s and from its HTTP API, and
//! serves Prometheus metrics. Plans are read again on SIGHUP and whenever a
//! file in the directory changes; a file that does not parse is reported
//! with its location and skipped (its last good version stays in force),
//! never taking the others down.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use cutover_core::plan::Release;
use cutover_core::{Event, Plan, Rollout};
use cutover_engine::controller::Happening;
use cutover_engine::{Clock, Controller, ControllerOptions, Engine};
use cutover_server::{Api, ApiError, Backend, CreateRequest, Created, Metrics, PlanInfo};

use crate::cli::Output;
use crate::progress::Progress;
use crate::settings::{holder, load_plan, open_store, store_choice, StoreChoice};
use crate::Exit;

/// Prints what a controller did, one line each.
pub fn report_happening(h: &Happening) {
    match h {
        Happening::Took { id, orphan: true } => {
            outln!("rollout {id}: taken over (its previous driver stopped)")
        }
        Happening::Took { id, orphan: false } => outln!("rollout {id}: driving"),
        Happening::Ended { id, outcome } => outln!("rollout {id}: {outcome}"),
        Happening::Unbuildable { id, error } => {
            eprintln!("rollout {id}: cannot drive it (trying again later): {error}")
        }
    }
}

/// `cutover serve`'s settings, resolved from its flags.
pub struct ServeSettings {
    pub plans: PathBuf,
    pub listen: String,
    pub token: Option<String>,
    pub store: Option<PathBuf>,
    pub scan: Duration,
    pub max_rollouts: usize,
    pub wait: Duration,
    pub options: cutover_engine::Options,
}

/// A plan file as last read.
#[derive(Clone)]
struct Loaded {
    path: PathBuf,
    plan: Plan,
}

/// The plans of the directory, by service.
struct Catalog {
    dir: PathBuf,
    store: StoreChoice,
    plans: Mutex<BTreeMap<String, Loaded>>,
    /// Each file's modification time and size when last read.
    seen: Mutex<Vec<(PathBuf, Option<SystemTime>, u64)>>,
}

impl Catalog {
    /// The directory's `*.toml` files with their times and sizes.
    fn fingerprint(&self) -> Result<Vec<(PathBuf, Option<SystemTime>, u64)>, String> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| format!("cannot read plan directory {}: {e}", self.dir.display()))?;
        let mut files: Vec<(PathBuf, Option<SystemTime>, u64)> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .map(|p| {
                let meta = std::fs::metadata(&p).ok();
                let modified = meta.as_ref().and_then(|m| m.modified().ok());
                let len = meta.map_or(0, |m| m.len());
                (p, modified, len)
            })
            .collect();
        files.sort();
        Ok(files)
    }

    /// Reads the directory again if anything changed (or `force`). Returns
    /// whether the set of plans changed.
    fn reload(&self, force: bool) -> Result<bool, String> {
        let files = self.fingerprint()?;
        {
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if !force && *seen == files {
                return Ok(false);
            }
        }
        let previous = self.plans.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let by_path: HashMap<PathBuf, Loaded> = previous
            .values()
            .map(|l| (l.path.clone(), l.clone()))
            .collect();
        let mut next: BTreeMap<String, Loaded> = BTreeMap::new();
        for (path, _, _) in &files {
            let loaded = match load_plan(path) {
                Ok(plan) => match store_choice(None, Some(&plan)) {
                    Ok(choice) if same_store(&choice, &self.store) => Loaded {
                        path: path.clone(),
                        plan,
                    },
                    Ok(choice) => {
                        eprintln!(
                            "skipping {}: its store ({choice}) is not the one this server drives ({})",
                            path.display(),
                            self.store
                        );
                        continue;
                    }
                    Err(e) => {
                        eprintln!("skipping {}: {}", path.display(), e.message());
                        continue;
                    }
                },
                Err(e) => match by_path.get(path) {
                    Some(old) => {
                        eprintln!("{}; keeping the version read before", e.message());
                        old.clone()
                    }
                    None => {
                        eprintln!("skipping a plan: {}", e.message());
                        continue;
                    }
                },
            };
            let service = loaded.plan.service.clone();
            if let Some(first) = next.get(&service) {
                eprintln!(
                    "skipping {}: service `{service}` already has a plan in {}",
                    path.display(),
                    first.path.display()
                );
                continue;
            }
            next.insert(service, loaded);
        }
        let changed = next.keys().ne(previous.keys())
            || next
                .iter()
                .any(|(s, l)| previous.get(s).is_none_or(|p| p.plan != l.plan));
        *self.plans.lock().unwrap_or_else(|e| e.into_inner()) = next;
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = files;
        Ok(changed)
    }

    fn get(&self, service: &str) -> Option<Loaded> {
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
            .cloned()
    }

    fn all(&self) -> Vec<Loaded> {
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

fn same_store(a: &StoreChoice, b: &StoreChoice) -> bool {
    match (a, b) {
        (StoreChoice::Sqlite(x), StoreChoice::Sqlite(y)) => {
            x == y
                || (x.canonicalize().ok().is_some()
                    && x.canonicalize().ok() == y.canonicalize().ok())
        }
        (
            StoreChoice::Dynamodb { table: t1, aws: a1 },
            StoreChoice::Dynamodb { table: t2, aws: a2 },
        ) => t1 == t2 && a1.region == a2.region && a1.endpoint_url == a2.endpoint_url,
        _ => false,
    }
}

struct ServeBackend {
    catalog: Arc<Catalog>,
    engine: Arc<Engine>,
    controller: Arc<Controller>,
}

#[async_trait]
impl Backend for ServeBackend {
    fn plans(&self) -> Vec<PlanInfo> {
        self.catalog
            .all()
            .into_iter()
            .map(|l| {
                let t = l.plan.targets();
                PlanInfo {
                    service: l.plan.service.clone(),
                    file: l.path.display().to_string(),
                    router: l.plan.router.kind().into(),
                    live: t.live,
                    candidate: t.candidate,
                    trigger: l.plan.trigger.is_some(),
                }
            })
            .collect()
    }

    async fn create(&self, request: CreateRequest) -> Result<Created, ApiError> {
        let loaded = self.catalog.get(&request.service).ok_or_else(|| {
            ApiError::NotFound(format!(
                "no plan for service `{}` in {}",
                request.service,
                self.catalog.dir.display()
            ))
        })?;
        let release = match (&request.image, &request.task_definition) {
            (Some(i), _) => Some(Release::Image(i.clone())),
            (None, Some(t)) => Some(Release::TaskDefinition(t.clone())),
            (None, None) => None,
        };
        let id = match &request.idempotency_key {
            Some(key) if key.is_empty() || key.len() > 256 => {
                return Err(ApiError::BadRequest(
                    "`idempotency_key` must have 1 to 256 characters".into(),
                ))
            }
            Some(key) => crate::start::keyed_id(&request.service, key),
            None => crate::start::new_id(&request.service, self.engine.now()),
        };
        // A key used before names its rollout: the same answer again.
        if request.idempotency_key.is_some() {
            if let Ok(Some(_)) = self.engine.store().load(&id).await {
                return Ok(Created {
                    id,
                    existed: true,
                    notes: vec![],
                });
            }
        }
        let options = crate::start::StartOptions {
            release,
            label: request.label.clone(),
            adopt: request.adopt,
            swap_colours: request.swap_colours,
        };
        match crate::start::new_rollout(&self.engine, loaded.plan, &id, &options).await {
            Ok(started) => {
                self.controller.wake();
                Ok(Created {
                    id,
                    existed: false,
                    notes: started.notes,
                })
            }
            // The same key, twice at once: the other request made it.
            Err(crate::start::StartError::Exists) if request.idempotency_key.is_some() => {
                Ok(Created {
                    id,
                    existed: true,
                    notes: vec![],
                })
            }
            Err(crate::start::StartError::Exists) => Err(ApiError::Conflict(format!(
                "a rollout with id `{id}` already exists"
            ))),
            Err(crate::start::StartError::Refused(m)) => Err(ApiError::Conflict(m)),
            Err(crate::start::StartError::Busy(m)) => Err(ApiError::Conflict(m)),
            Err(crate::start::StartError::Failed(m)) => Err(ApiError::Unavailable(m)),
        }
    }
}

/// Whether `listen` is a loopback address (the API may then go without a token).
fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

pub async fn serve(settings: ServeSettings) -> Exit {
    let listen: SocketAddr = match settings.listen.parse() {
        Ok(a) => a,
        Err(e) => {
            return Exit::Usage(format!(
                "--listen `{}`: not an address and port ({e}); e.g. 127.0.0.1:9300",
                settings.listen
            ))
        }
    };
    if settings.token.is_none() && !is_loopback(&listen) {
        return Exit::Usage(format!(
            "--listen {listen} is reachable beyond this host: give the API a token (--token or $CUTOVER_API_TOKEN)"
        ));
    }
    if !settings.plans.is_dir() {
        return Exit::Usage(format!(
            "--plans {}: not a directory of plan files",
            settings.plans.display()
        ));
    }
    // The store: --store, else the one the plans name (which must agree).
    let store_choice = match &settings.store {
        Some(p) => StoreChoice::Sqlite(p.clone()),
        None => {
            let mut first = None;
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&settings.plans)
                .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
                .unwrap_or_default();
            entries.sort();
            for p in entries
                .iter()
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            {
                if let Ok(plan) = load_plan(p) {
                    if let Ok(c) = store_choice(None, Some(&plan)) {
                        first = Some(c);
                        break;
                    }
                }
            }
            match first {
                Some(c) => c,
                None => match store_choice(None, None) {
                    Ok(c) => c,
                    Err(e) => return e,
                },
            }
        }
    };
    let metrics = Arc::new(Metrics::new());
    let store: Arc<dyn cutover_engine::store::Store> = match open_store(&store_choice).await {
        Ok(s) => {
            let kind = match &store_choice {
                StoreChoice::Sqlite(_) => "sqlite",
                StoreChoice::Dynamodb { .. } => "dynamodb",
            };
            Arc::new(cutover_engine::store::MeteredStore::new(
                s,
                kind,
                metrics.clone(),
            ))
        }
        Err(e) => return e,
    };
    let catalog = Arc::new(Catalog {
        dir: settings.plans.clone(),
        store: store_choice.clone(),
        plans: Mutex::default(),
        seen: Mutex::default(),
    });
    if let Err(e) = catalog.reload(true) {
        return Exit::Usage(e);
    }

    let progress = Progress::new(Output::Text, "").labelled();
    let api_slot: Arc<Mutex<Option<Arc<Api>>>> = Arc::default();
    let observer = {
        let (metrics, api_slot) = (metrics.clone(), api_slot.clone());
        Arc::new(move |id: &str, r: &Rollout, events: &[Event]| {
            progress.update(id, r, events);
            metrics.observe(id, r, events);
            if let Some(api) = api_slot.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                api.publish(id, r, events);
            }
        })
    };
    let clock = Clock::system();
    let engine = Arc::new(
        Engine::new(store.clone(), clock, holder(), settings.options.clone())
            .with_observer(observer)
            .with_instruments(metrics.clone()),
    );
    let controller = {
        let metrics = metrics.clone();
        Arc::new(
            Controller::new(
                engine.clone(),
                Arc::new(crate::adapters::PlanAdapters),
                ControllerOptions {
                    scan_interval: settings.scan,
                    max_rollouts: settings.max_rollouts,
                    ..ControllerOptions::default()
                },
            )
            .with_reporter(Arc::new(move |h: &Happening| {
                report_happening(h);
                metrics.happening(h);
            })),
        )
    };
    controller.set_services(catalog.all().into_iter().map(|l| l.plan.service));

    let backend = Arc::new(ServeBackend {
        catalog: catalog.clone(),
        engine: engine.clone(),
        controller: controller.clone(),
    });
    let api = Arc::new(Api::new(
        store.clone(),
        backend,
        metrics.clone(),
        settings.token.clone(),
        clock,
        settings.options.tick,
    ));
    *api_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(api.clone());
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => return Exit::Internal(format!("cannot listen on {listen}: {e}")),
    };
    let bound = listener.local_addr().map_or(listen, |a| a);

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let driving = {
        let (controller, stopped) = (controller.clone(), stopped.clone());
        tokio::spawn(async move { controller.run(stopped).await })
    };
    let serving = tokio::spawn(api.clone().serve(listener, stopped.clone()));
    let mut triggers = Triggers::default();
    triggers.sync(&catalog, &controller, &metrics, settings.wait);
    let services: Vec<String> = catalog.all().into_iter().map(|l| l.plan.service).collect();
    outln!(
        "serving on http://{bound} ({} plans: {}; store {store_choice})",
        services.len(),
        services.join(", ")
    );

    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!(
                "cannot listen for SIGHUP ({e}); plans are still read again when they change"
            );
            None
        }
    };
    let mut poll = tokio::time::interval(Duration::from_secs(2));
    // Listening once, for the whole loop: a listener made afresh each turn
    // would miss a SIGTERM that came while the plans were being read.
    let terminated = crate::signals::terminated();
    tokio::pin!(terminated);
    loop {
        let forced = tokio::select! {
            _ = &mut terminated => break,
            _ = async {
                match hangup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => true,
            _ = poll.tick() => false,
        };
        match catalog.reload(forced) {
            Ok(true) => {
                let services: Vec<String> =
                    catalog.all().into_iter().map(|l| l.plan.service).collect();
                outln!("plans read again: {}", services.join(", "));
                controller.set_services(services);
                triggers.sync(&catalog, &controller, &metrics, settings.wait);
                controller.wake();
            }
            Ok(false) => {}
            Err(e) => eprintln!("{e}"),
        }
    }
    outln!("stopping: each driver finishes its call in flight and hands its rollout over");
    triggers.stop_all();
    let _ = stop.send(true);
    let _ = serving.await;
    match driving.await {
        Ok(Ok(())) => Exit::Ok,
        Ok(Err(e)) => Exit::Internal(e.to_string()),
        Err(e) => Exit::Internal(format!("the controller failed: {e}")),
    }
}

/// One task per plan with a `[trigger]`, restarted when its plan changes.
#[derive(Default)]
struct Triggers {
    running: HashMap<String, (Plan, tokio::task::JoinHandle<()>)>,
}

impl Triggers {
    fn sync(
        &mut self,
        catalog: &Catalog,
        controller: &Arc<Controller>,
        metrics: &Arc<Metrics>,
        wait: Duration,
    ) {
        let wanted: HashMap<String, Plan> = catalog
            .all()
            .into_iter()
            .filter(|l| l.plan.trigger.is_some())
            .map(|l| (l.plan.service.clone(), l.plan))
            .collect();
        self.running.retain(|service, (plan, task)| {
            let keep = wanted.get(service) == Some(plan);
            if !keep {
                task.abort();
            }
            keep
        });
        for (service, plan) in wanted {
            if self.running.contains_key(&service) {
                continue;
            }
            let (controller, metrics, p) = (controller.clone(), metrics.clone(), plan.clone());
            let task = tokio::spawn(async move {
                let exit = crate::aws::follow_trigger(p, controller, wait, Some(metrics)).await;
                eprintln!("the trigger stopped: {}", exit.message());
            });
            self.running.insert(service, (plan, task));
        }
    }

    fn stop_all(&mut self) {
        for (_, (_, task)) in self.running.drain() {
            task.abort();
        }
    }
}
