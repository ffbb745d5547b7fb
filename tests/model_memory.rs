//! What a model reload leaves behind in resident memory, measured in a process of its own (RSS
//! is per process, so this is a test binary with this one test): the service with the same
//! allocator settings as `intentd serve`, a fake model holding 128 MiB of weights in 1 MiB
//! allocations (like the encoder's tensors: under the raised mmap threshold, so in malloc's
//! heaps), replaced three times.
//!
//! Regression (issue 12 item 7): on the old code a reload only swapped the model (what
//! `install_model` still does) and the old one was freed wherever its last reference went; glibc
//! kept the freed heap pages, so RSS stayed a whole model higher after each reload (this test
//! measured +128 MiB there and failed). `replace_model` frees it after its last request and
//! returns the memory.

use std::path::PathBuf;
use std::sync::Arc;

use intentd::clock::{ManualClock, SharedClock};
use intentd::metrics::Metrics;
use intentd::model::classifier::{IntentBackend, Prediction};
use intentd::model::encoder::Tokenized;
use intentd::model::fake::FakeBackend;
use intentd::operator::{LiveOperator, OperatorSnapshot};
use intentd::policy::Playbook;
use intentd::service::{Service, ServiceSettings};

const MIB: usize = 1 << 20;
const WEIGHTS_MIB: usize = 128;

/// A fake model with `WEIGHTS_MIB` of weights, every page written.
struct Heavy {
    inner: FakeBackend,
    _weights: Vec<Vec<u8>>,
}

impl Heavy {
    fn new(inner: FakeBackend, seed: u8) -> Self {
        let weights = (0..WEIGHTS_MIB)
            .map(|i| vec![seed.wrapping_add(i as u8) | 1; MIB])
            .collect();
        Self {
            inner,
            _weights: weights,
        }
    }
}

impl IntentBackend for Heavy {
    fn labels(&self) -> &[String] {
        self.inner.labels()
    }
    fn version(&self) -> &str {
        self.inner.version()
    }
    fn tokenize(&self, text: &str) -> anyhow::Result<Tokenized> {
        self.inner.tokenize(text)
    }
    fn predict(&self, batch: &[&Tokenized]) -> anyhow::Result<Vec<Prediction>> {
        self.inner.predict(batch)
    }
}

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: f64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096.0 / MIB as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_models_give_their_memory_back() {
    intentd::model::allocator::tune_for_tensors();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let settings = ServiceSettings {
        max_in_flight: 8,
        request_timeout_ms: 1_000,
        top_k: 3,
        operator_dir: repo.join("config/operator"),
        training_data: repo.join("training-data/nlu"),
        ..ServiceSettings::default()
    };
    let clock = Arc::new(ManualClock::new(1_795_572_000_000));
    let shared: SharedClock = clock.clone();
    let snapshot = OperatorSnapshot::load_dir(
        &settings.operator_dir,
        &settings.training_data,
        settings.fusion.clone(),
    )
    .unwrap();
    let operator = Arc::new(LiveOperator::from_pointee(snapshot));
    let playbook = Playbook::new(operator.clone(), shared.clone(), 7);
    let service = Service::new(
        settings,
        shared,
        Some(clock),
        operator,
        playbook,
        None,
        Arc::new(Metrics::new()),
    );
    let labels: Vec<String> = service.operator().catalog.ids().map(String::from).collect();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let model = |n: u8| {
        let fake = FakeBackend::new(&labels, &[("多少钱", "price")], 0.9)
            .unwrap()
            .with_version(&format!("heavy-{n}"));
        Arc::new(Heavy::new(fake, n))
    };

    service.install_model(model(0));
    let one_model = rss_mib();
    for n in 1..=3 {
        let retired = service.replace_model(model(n)).await;
        assert!(
            matches!(
                retired,
                Some(intentd::service::retire::Retired::Freed { .. })
            ),
            "{retired:?}"
        );
        let now = rss_mib();
        assert!(
            now < one_model + WEIGHTS_MIB as f64 / 2.0,
            "after reload {n}: RSS {now:.0} MiB, {one_model:.0} MiB with one model: the replaced \
             model's {WEIGHTS_MIB} MiB were not given back"
        );
    }
}
