//! Stage `summarise`: in a run of several seeds, once every seed's `analyse` has committed, reads
//! their `result.json` files and writes the cross-seed summary (`seeds.json`, `seeds.md`:
//! per-statistic per-seed values, mean and spread, the block tests of
//! `pspace_analysis::seeds`, and in how many seeds each pre-registered row fires).

use super::{ExecError, StageContext, StageError};

/// The result file of a seed's analysis, as `analyse` names it among its outputs.
const RESULT: &str = "result.json";

pub fn summarise(cx: &mut StageContext<'_>) -> Result<(), ExecError> {
    let dir = cx.work_dir().join("seed-results");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| StageError::io(&dir, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| StageError::io(&dir, e))?;
    let deps: Vec<String> = cx.job.deps.keys().cloned().collect();
    let mut paths = Vec::with_capacity(deps.len());
    for (i, dep) in deps.iter().enumerate() {
        let bytes = cx.get(dep, RESULT)?;
        let path = dir.join(format!("{i:03}-{RESULT}"));
        std::fs::write(&path, bytes).map_err(|e| StageError::io(&path, e))?;
        paths.push(path);
    }
    let summary = pspace_analysis::seeds::summarize_files(&paths)
        .map_err(|e| StageError::Analysis(format!("cross-seed summary: {e}")))?;
    let out = cx.work_dir().join("summary");
    pspace_analysis::seeds::write_outputs(&summary, &out)
        .map_err(|e| StageError::Analysis(format!("cross-seed summary: {e}")))?;
    cx.put_all(super::train::read_tree(&out)?)
}
