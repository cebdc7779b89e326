//! Where the loops' time goes during a phase of a benchmark: each child's
//! `sluice_consumer_batch_phase_seconds` and `sluice_consumer_pickup_delay_seconds`, scraped
//! from its admin server before and after, as mean milliseconds per batch.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// (group, series) → (sum of seconds, count).
#[derive(Debug, Default, Clone)]
pub(super) struct Snapshot(BTreeMap<(String, String), (f64, f64)>);

/// Reads the phase and pickup histograms' sums and counts from `addr`'s `/metrics`.
pub(super) async fn scrape(addr: SocketAddr) -> anyhow::Result<Snapshot> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(parse(&text))
}

fn parse(text: &str) -> Snapshot {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let (series, field) =
            if let Some(rest) = line.strip_prefix("sluice_consumer_batch_phase_seconds_") {
                ("phase", rest)
            } else if let Some(rest) = line.strip_prefix("sluice_consumer_pickup_delay_seconds_") {
                ("pickup", rest)
            } else {
                continue;
            };
        let Some((kind, rest)) = field.split_once('{') else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
        };
        let (Some(group), Ok(value)) = (label("group"), value.trim().parse::<f64>()) else {
            continue;
        };
        let name = match series {
            "phase" => label("phase").unwrap_or_default(),
            _ => "pickup".to_string(),
        };
        let entry = out.entry((group, name)).or_insert((0.0, 0.0));
        match kind {
            "sum" => entry.0 = value,
            "count" => entry.1 = value,
            _ => {}
        }
    }
    Snapshot(out)
}

/// One line per group: mean milliseconds per batch of each phase between two snapshots.
pub(super) fn describe(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut by_group: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((group, name), (sum, count)) in &after.0 {
        let (sum0, count0) = before
            .0
            .get(&(group.clone(), name.clone()))
            .copied()
            .unwrap_or_default();
        let n = count - count0;
        if n > 0.0 {
            by_group
                .entry(group)
                .or_default()
                .push(format!("{name} {:.1} ms", (sum - sum0) * 1000.0 / n));
        }
    }
    by_group
        .into_iter()
        .map(|(group, parts)| format!("  {group}: mean per batch: {}", parts.join(", ")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_per_batch_come_from_the_difference_of_two_scrapes() {
        let before = parse(
            "sluice_consumer_batch_phase_seconds_sum{group=\"g\",phase=\"commit\"} 1\n\
             sluice_consumer_batch_phase_seconds_count{group=\"g\",phase=\"commit\"} 10\n",
        );
        let after = parse(
            "# HELP x\n\
             sluice_consumer_batch_phase_seconds_bucket{group=\"g\",phase=\"commit\",le=\"0.1\"} 3\n\
             sluice_consumer_batch_phase_seconds_sum{group=\"g\",phase=\"commit\"} 1.5\n\
             sluice_consumer_batch_phase_seconds_count{group=\"g\",phase=\"commit\"} 110\n\
             sluice_consumer_pickup_delay_seconds_sum{group=\"g\"} 2\n\
             sluice_consumer_pickup_delay_seconds_count{group=\"g\"} 100\n",
        );
        assert_eq!(
            describe(&before, &after),
            vec!["  g: mean per batch: commit 5.0 ms, pickup 20.0 ms".to_string()]
        );
    }
}
