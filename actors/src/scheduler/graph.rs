//! The plan as a checked graph: task keys to indices, dependencies and dependants, and the order
//! in which ready tasks are granted.
//!
//! Checked once at construction so the event handlers never meet an unknown key or a cycle
//! (a cycle would leave its tasks waiting forever, a run that neither finishes nor fails). The
//! grant order is computed here once too: it depends on the plan alone, so `acquire` only walks
//! a list.

use super::{PlanNode, SchedulerError, TaskRef};
use std::collections::BTreeMap;

#[derive(Debug)]
pub(crate) struct Graph {
    pub(crate) index: BTreeMap<TaskRef, usize>,
    /// Per task, its dependencies' indices in `depends_on` order.
    pub(crate) deps: Vec<Vec<usize>>,
    pub(crate) dependants: Vec<Vec<usize>>,
    /// Every task index, highest priority first, ties in plan order: the first ready task in
    /// this order that a worker can run is the one it is granted. A task's priority is its
    /// bottom level ([`bottom_levels`]): the expected time from its start to the end of the run
    /// on unlimited workers, so the head of the longest remaining chain comes first.
    pub(crate) grant_order: Vec<usize>,
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
        let costs: Vec<u64> = plan.iter().map(|node| node.cost).collect();
        let priority = bottom_levels(&costs, &deps, &dependants);
        let mut grant_order: Vec<usize> = (0..plan.len()).collect();
        // Stable sort on the priority alone: equal priorities keep plan order.
        grant_order.sort_by_key(|&i| std::cmp::Reverse(priority[i]));
        Ok(Graph {
            index,
            deps,
            dependants,
            grant_order,
        })
    }
}

/// The bottom level of every task of an acyclic graph (HLFET's priority): `cost[i]` plus the
/// largest bottom level among `dependants[i]`, saturating. Sinks first (Kahn's order on the
/// reversed edges), so the plan need not list dependencies first and a long chain cannot
/// overflow the stack.
fn bottom_levels(cost: &[u64], deps: &[Vec<usize>], dependants: &[Vec<usize>]) -> Vec<u64> {
    let mut level = vec![0u64; cost.len()];
    // Dependants not yet given a level, per task; a task is done once all of them are.
    let mut pending: Vec<usize> = dependants.iter().map(Vec::len).collect();
    let mut done: Vec<usize> = (0..cost.len()).filter(|&i| pending[i] == 0).collect();
    while let Some(i) = done.pop() {
        let below = dependants[i].iter().map(|&d| level[d]).max().unwrap_or(0);
        level[i] = cost[i].saturating_add(below);
        for &d in &deps[i] {
            pending[d] -= 1;
            if pending[d] == 0 {
                done.push(d);
            }
        }
    }
    level
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
