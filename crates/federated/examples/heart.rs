//! The four-centre UCI Heart Disease benchmark (FLamby's Fed-Heart-Disease preparation), in one
//! process: per-centre mean test accuracy of a logistic regression trained by each centre alone,
//! on the pooled training rows, by FedAvg, and by exact federated Newton regression (through
//! secure aggregation). FLamby's published figures, for orientation: pooled 0.735, FedAvg 0.685,
//! best federated strategy 0.731.
//!
//! Usage: heart [PATH to heart_disease_4centres.csv]

use medfed_federated::fedavg::{self, LocalTraining, ModelKind, WeightedUpdate};
use medfed_federated::regression::{self, NewtonSummary};
use medfed_federated::secagg;
use medfed_federated::table::Design;
use medfed_federated::{Disclosure, heart};

const RULES: Disclosure = Disclosure {
    min_rows: 10,
    min_cell: 5,
};

fn masked_sum(round: u64, vectors: &[Vec<f64>]) -> Vec<f64> {
    secagg::run_in_process(round, vectors, 3, &[]).unwrap()
}

fn accuracy(predict: &dyn Fn(&[f64]) -> f64, d: &Design) -> f64 {
    let ok =
        d.x.iter()
            .zip(&d.y)
            .filter(|(x, y)| (predict(x) >= 0.5) == (**y > 0.5))
            .count();
    ok as f64 / d.rows() as f64
}

fn newton(d: &Design, ridge: f64) -> Box<dyn Fn(&[f64]) -> f64> {
    let positives = d.y.iter().filter(|y| **y > 0.5).count();
    if positives == 0 || positives == d.rows() {
        // One class only (Switzerland's training part): the model is that class.
        let p = if positives == 0 { 0.0 } else { 1.0 };
        return Box::new(move |_| p);
    }
    let fit = regression::newton_fit(d.width(), ridge, 100, 1e-10, |b| {
        regression::logistic_site_step(d, b, &RULES)
    })
    .unwrap();
    Box::new(move |x| regression::predict_logistic(&fit.beta, x))
}

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        "../shared/datasets/heart_disease_uci_4centres/heart_disease_4centres.csv".into()
    });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut centres = heart::centres(&text).unwrap();
    heart::standardise_federated(&mut centres, &RULES).unwrap();
    let p = centres[0].train.width();
    let ridge = 1e-3;
    let mean_acc = |f: &dyn Fn(usize, &[f64]) -> f64| -> (f64, Vec<f64>) {
        let per: Vec<f64> = centres
            .iter()
            .enumerate()
            .map(|(k, c)| accuracy(&|x| f(k, x), &c.test))
            .collect();
        (per.iter().sum::<f64>() / per.len() as f64, per)
    };
    let local: Vec<_> = centres.iter().map(|c| newton(&c.train, ridge)).collect();
    let alone = mean_acc(&|k, x| local[k](x));
    let pooled_rows = Design::concat(&centres.iter().map(|c| &c.train).collect::<Vec<_>>());
    let pooled_model = newton(&pooled_rows, ridge);
    let pooled = mean_acc(&|_, x| pooled_model(x));
    let mut round = 0;
    let t0 = std::time::Instant::now();
    let fed = regression::newton_fit(p, ridge, 100, 1e-10, |beta| {
        round += 1;
        let parts: Vec<Vec<f64>> = centres
            .iter()
            .map(|c| {
                regression::logistic_site_step(&c.train, beta, &RULES)
                    .unwrap()
                    .to_vec()
            })
            .collect();
        NewtonSummary::from_vec(p, &masked_sum(round, &parts))
    })
    .unwrap();
    let newton_time = t0.elapsed();
    let exact = mean_acc(&|_, x| regression::predict_logistic(&fed.beta, x));
    let t = LocalTraining {
        model: ModelKind::Logistic,
        epochs: 1,
        batch_size: 8,
        learning_rate: 0.05,
        mu: 0.0,
        seed: 42,
    };
    let rounds = 50;
    let mut global = t.model.init(p, t.seed);
    for r in 0..rounds {
        let ups: Vec<Vec<f64>> = centres
            .iter()
            .enumerate()
            .map(|(s, c)| {
                fedavg::local_round(&t, &global, &c.train, r, s as u64, &RULES)
                    .unwrap()
                    .to_vec()
            })
            .collect();
        global = fedavg::average(&WeightedUpdate::from_vec(&masked_sum(10_000 + r, &ups)).unwrap())
            .unwrap();
    }
    let avg = mean_acc(&|_, x| t.model.predict(&global, x));
    let names: Vec<&str> = centres.iter().map(|c| c.name).collect();
    println!(
        "UCI Heart Disease, 4 centres (FLamby split), logistic regression, per-centre test accuracy"
    );
    println!("{:<34} {:>6}   {}", "", "mean", names.join(" / "));
    for (label, (m, per)) in [
        ("each centre alone", &alone),
        ("pooled (all training rows)", &pooled),
        (&*format!("FedAvg ({rounds} rounds, secure agg.)"), &avg),
        (
            &*format!("exact federated Newton ({} it.)", fed.iterations),
            &exact,
        ),
    ] {
        let per: Vec<String> = per.iter().map(|a| format!("{a:.3}")).collect();
        println!("{label:<34} {m:>6.3}   {}", per.join(" / "));
    }
    let max_diff = {
        let pooled_fit = regression::newton_fit(p, ridge, 100, 1e-10, |b| {
            regression::logistic_site_step(&pooled_rows, b, &RULES)
        })
        .unwrap();
        pooled_fit
            .beta
            .iter()
            .zip(&fed.beta)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    };
    println!(
        "federated Newton vs pooled: max coefficient difference {max_diff:.1e}; {} rounds in {:.1} ms in-process",
        fed.iterations,
        newton_time.as_secs_f64() * 1e3
    );
    println!("FLamby (published): pooled 0.735, FedAvg 0.685, best federated strategy 0.731");
}
