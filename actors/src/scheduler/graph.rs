//! The plan as a checked graph: task keys to indices, dependencies and dependants.
//!
//! Checked once at construction so the event handlers never meet an unknown key or a cycle
//! (a cycle would leave its tasks waiting forever, a run that neither finishes nor fails).

use super::{PlanNode, SchedulerError, TaskRef};
use std::collections::BTreeMap;

#[derive(Debug)]
pub(crate) struct Graph {
    pub(crate) index: BTreeMap<TaskRef, usize>,
    /// Per task, its dependencies' indices in `depends_on` order.
    pub(crate) deps: Vec<Vec<usize>>,
    pub(crate) dependants: Vec<Vec<usize>>,
}

impl Graph {
    /// Errors: a key twice, a dependency not in the plan or listed twice, a cycle.
    pub(crate) fn new(plan: &[PlanNode]) -> Result<Graph, SchedulerError> {
        let mut index = BTreeMap::new();
        for (i, node) in plan.iter().enumerate() {
            if index.insert(node.task.clone(), i).is_some() {
                return Err(SchedulerError::DuplicateTask {
                    task: node.task.clone(),
                });
            }
        }
        let mut deps = Vec::with_capacity(plan.len());
        let mut dependants = vec![Vec::new(); plan.len()];
        for (i, node) in plan.iter().enumerate() {
            let mut own = Vec::with_capacity(node.depends_on.len());
            for dep in &node.depends_on {
                let unknown = || SchedulerError::UnknownDependency {
                    task: node.task.clone(),
                    dependency: dep.clone(),
                };
                let d = *index.get(dep).ok_or_else(unknown)?;
                if own.contains(&d) {
                    return Err(SchedulerError::DuplicateDependency {
                        task: node.task.clone(),
                        dependency: dep.clone(),
                    });
                }
                own.push(d);
                dependants[d].push(i);
            }
            deps.push(own);
        }
        if let Some(cycle) = find_cycle(&deps) {
            let cycle = cycle.into_iter().map(|i| plan[i].task.clone()).collect();
            return Err(SchedulerError::Cycle { cycle });
        }
        Ok(Graph {
            index,
            deps,
            dependants,
        })
    }
}

/// A cycle as indices with the first repeated at the end, found by an iterative depth-first
/// search (no recursion, so a long chain cannot overflow the stack).
fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; deps.len()];
    for root in 0..deps.len() {
        if mark[root] != Mark::New {
            continue;
        }
        // (node, index of the next dependency to visit)
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::OnPath;
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            let Some(&dep) = deps[node].get(*next) else {
                mark[node] = Mark::Done;
                path.pop();
                continue;
            };
            *next += 1;
            match mark[dep] {
                Mark::Done => {}
                Mark::New => {
                    mark[dep] = Mark::OnPath;
                    path.push((dep, 0));
                }
                Mark::OnPath => {
                    let start = path.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                    let mut cycle: Vec<usize> = path[start..].iter().map(|&(n, _)| n).collect();
                    cycle.push(dep);
                    return Some(cycle);
                }
            }
        }
    }
    None
}
