//! Criterion benchmarks of one lookup: the decision-tree classifier against tuple-space search
//! and a linear scan, on generated fw-shaped ClassBench sets (the hardest shape), and a compiled
//! Kubernetes-shaped program against the reference evaluator.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use palisade_bench::classbench::{self, Shape};
use palisade_bench::{k8s, tss::TupleSpace};
use palisade_dataplane::classifier::linear::LinearClassifier;
use palisade_dataplane::classifier::tree::{TreeClassifier, TreeRule};
use palisade_dataplane::compile::Compiler;
use palisade_policy::eval::Evaluator;
use palisade_policy::model::Direction;
use std::hint::black_box;

fn classbench_lookups(c: &mut Criterion) {
    let mut g = c.benchmark_group("fw-lookup");
    for n in [1_000usize, 10_000] {
        let filters = classbench::generate(Shape::Fw, n, 1);
        let rules: Vec<TreeRule<u32>> = filters.iter().enumerate().map(|(i, f)| f.to_rule(i as u32)).collect();
        let trace = classbench::trace_in_rules(&filters, 4096, 2);
        let tree = TreeClassifier::build(rules.clone(), &[]);
        let tss = TupleSpace::build(&filters);
        let linear = LinearClassifier::build(rules);
        g.throughput(Throughput::Elements(trace.len() as u64));
        g.bench_with_input(BenchmarkId::new("tree", n), &trace, |b, t| {
            b.iter(|| t.iter().filter(|k| tree.lookup(black_box(k), 0, |_| true).is_some()).count())
        });
        g.bench_with_input(BenchmarkId::new("tss", n), &trace, |b, t| b.iter(|| t.iter().filter(|k| tss.lookup(black_box(k)).is_some()).count()));
        if n <= 1_000 {
            g.bench_with_input(BenchmarkId::new("linear", n), &trace, |b, t| {
                b.iter(|| t.iter().filter(|k| linear.lookup(black_box(k), 0, |_| true).is_some()).count())
            });
        }
    }
    g.finish();
}

fn k8s_lookups(c: &mut Criterion) {
    let gen = k8s::generate(1_000, 4096, 1);
    let programs = Compiler::new().compile(&palisade_policy::calc::NodeView::compute(&gen.cluster, None));
    let ev = Evaluator::new(&gen.cluster);
    let lookups: Vec<_> = gen
        .flows
        .iter()
        .filter_map(|f| gen.cluster.endpoint_for_ip(f.dst).map(|ep| (programs[&(ep.name.clone(), Direction::Ingress)].clone(), ep, f)))
        .collect();
    let mut g = c.benchmark_group("k8s-1000-policies");
    g.throughput(Throughput::Elements(lookups.len() as u64));
    g.bench_function("compiled", |b| b.iter(|| lookups.iter().filter(|(p, _, f)| p.classify(black_box(f)).allowed).count()));
    g.bench_function("evaluator", |b| {
        b.iter(|| lookups.iter().filter(|(_, ep, f)| ev.direction(ep, Direction::Ingress, black_box(f), false).allowed).count())
    });
    g.finish();
}

criterion_group!(benches, classbench_lookups, k8s_lookups);
criterion_main!(benches);
