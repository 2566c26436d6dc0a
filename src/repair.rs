//! `p2posd --repair`: with the data directory locked, the kernel moves a damaged store aside
//! and salvages what reads; this module says what was recovered and lost in the user's words,
//! each service naming the records it keeps (`STORE_CONTENTS`).

use std::{fmt::Write as _, path::Path, process::ExitCode};

use p2pos_kernel::store::{Census, Contents, Repair};

/// Every service's records, in the order a report lists them.
fn contents() -> Vec<Contents> {
    [
        p2pos_gateway::STORE_CONTENTS,
        p2pos_overlay::STORE_CONTENTS,
        p2pos_tasks::STORE_CONTENTS,
        p2pos_forward::STORE_CONTENTS,
        p2pos_groups::STORE_CONTENTS,
        p2pos_resources::STORE_CONTENTS,
        p2pos_network::STORE_CONTENTS,
    ]
    .concat()
}

/// Runs the repair of the store in `data_dir` and prints its report; the exit code.
pub(crate) fn run(data_dir: &Path) -> ExitCode {
    let _lock = match p2pos_kernel::lock::DataDirLock::acquire(data_dir) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("p2posd: error: {e}; stop it before repairing its store");
            return ExitCode::from(2);
        }
    };
    let store = data_dir.join(p2pos_kernel::store::DIR);
    match p2pos_kernel::store::repair(&store) {
        Ok(repair) => {
            print!("{}", report(&store, data_dir, &repair));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("p2posd: error: repairing the store: {e}");
            ExitCode::from(1)
        }
    }
}

/// The report, for people.
fn report(store: &Path, data_dir: &Path, repair: &Repair) -> String {
    let mut out = String::new();
    if repair.damage.is_empty() {
        let _ = writeln!(
            out,
            "The store at {} is whole: nothing was moved or changed.",
            store.display()
        );
        return out;
    }
    let peer = match p2pos_kernel::identity::load(data_dir) {
        Ok(Some(key)) => format!("peer id {}", key.public().to_peer_id()),
        Ok(None) => "there is none yet".to_owned(),
        Err(e) => format!("unreadable: {e}"),
    };
    if repair.resumed {
        let _ = writeln!(out, "An interrupted repair was finished.");
    }
    let kept = match &repair.moved_to {
        Some(moved_to) => format!(
            "It is kept as it was found at {} (nothing was deleted).",
            moved_to.display()
        ),
        None => "Nothing of it was there to keep.".to_owned(),
    };
    let _ = writeln!(
        out,
        "The store at {} was damaged: {}.\n{kept}\n\
         A new store holds everything that could still be read. The node's identity \
         ({}, {peer}) was not touched.\n",
        store.display(),
        repair.damage,
        p2pos_kernel::identity::KEY_FILE,
    );
    let before_label = match &repair.before {
        Some((true, _)) => "at last stop",
        Some((false, _)) => "at last start",
        None => "before",
    };
    let before = repair.before.as_ref().map(|(_, census)| census);
    // Kinds of which neither store holds any are left out.
    let rows: Vec<_> = rows(&repair.recovered, before)
        .into_iter()
        .filter(|(_, recovered, was)| *recovered > 0 || was.is_none_or(|n| n > 0))
        .collect();
    let width = rows
        .iter()
        .map(|(what, ..)| what.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let _ = writeln!(
        out,
        "{:<width$}  {:>9}  {:>13}  {:>6}",
        "what", "recovered", before_label, "lost"
    );
    for (what, recovered, was) in rows {
        let (was, lost) = match was {
            Some(n) => (n.to_string(), n.saturating_sub(recovered).to_string()),
            None => ("?".to_owned(), "?".to_owned()),
        };
        let _ = writeln!(out, "{what:<width$}  {recovered:>9}  {was:>13}  {lost:>6}");
    }
    if matches!(repair.before, Some((false, _))) {
        let _ = writeln!(
            out,
            "\n(The node did not stop cleanly last time: \"at last start\" does not count what it \
             wrote after it started.)"
        );
    } else if repair.before.is_none() {
        let _ = writeln!(
            out,
            "\n(The store had no readable manifest: what it held before is not known.)"
        );
    }
    for short in &repair.unreadable {
        let _ = writeln!(out, "Reading stopped short: {short}");
    }
    let _ = writeln!(
        out,
        "\nStart the node again as usual. Lost queued messages must be sent again by their \
         apps; lost app tokens are created again with `p2pctl tokens create APP`."
    );
    out
}

/// One row per kind of record that either census holds: what, recovered, held before.
fn rows(recovered: &Census, before: Option<&Census>) -> Vec<(String, u64, Option<u64>)> {
    let contents = contents();
    let mut rows = Vec::new();
    let mut trees: Vec<&String> = recovered.trees.keys().collect();
    if let Some(before) = before {
        trees.extend(before.trees.keys());
    }
    trees.sort();
    trees.dedup();
    for tree in trees {
        if tree.starts_with("__sled") {
            continue;
        }
        let kinds: Vec<&Contents> = contents.iter().filter(|c| c.tree == tree).collect();
        if kinds.is_empty() {
            let count = |c: &Census| c.trees.get(tree).map_or(0, |t| t.entries);
            rows.push((
                format!("other records (tree {tree})"),
                count(recovered),
                before.map(count),
            ));
            continue;
        }
        for kind in kinds {
            let count = |c: &Census| count_kind(c, kind, &contents);
            rows.push((
                format!("{} ({tree})", kind.what),
                count(recovered),
                before.map(count),
            ));
        }
    }
    rows
}

/// Entries of `kind` in `census`: those of its first key byte, or for a kind with none, the
/// tree's entries that no other kind of it claims.
fn count_kind(census: &Census, kind: &Contents, all: &[Contents]) -> u64 {
    let Some(tree) = census.trees.get(kind.tree) else {
        return 0;
    };
    match kind.prefix {
        Some(byte) => tree.by_first_byte.get(&byte).copied().unwrap_or(0),
        None => {
            let claimed: u64 = all
                .iter()
                .filter(|c| c.tree == kind.tree)
                .filter_map(|c| c.prefix)
                .map(|b| tree.by_first_byte.get(&b).copied().unwrap_or(0))
                .sum();
            tree.entries.saturating_sub(claimed)
        }
    }
}
