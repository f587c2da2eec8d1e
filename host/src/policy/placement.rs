//! Where replicas go when tabs sit on several machines: one per machine before any machine gets a
//! second. Two tabs on one 2-core node are not twice its capacity (they share its cores), and a
//! node lost at once takes all of its tabs: replicas spread over nodes keep both throughput and
//! survival. Tabs the host launched itself all share this machine.

/// `machines[i]` is the machine of candidate `i` (a Grid node's id; `None` for this machine),
/// candidates in preference order. Returns the candidates' indices, reordered so that each
/// machine's first candidate comes before any machine's second, preference kept otherwise.
pub fn spread(machines: &[Option<&str>]) -> Vec<usize> {
    let mut seen: Vec<(Option<&str>, usize)> = Vec::new();
    let mut rank: Vec<(usize, usize)> = Vec::with_capacity(machines.len());
    for (i, m) in machines.iter().enumerate() {
        let n = match seen.iter_mut().find(|(k, _)| k == m) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                seen.push((*m, 0));
                0
            }
        };
        rank.push((n, i));
    }
    rank.sort();
    rank.into_iter().map(|(_, i)| i).collect()
}

/// Whether a node holding `tabs` of the pool's tabs, whose browsers report `cores` cores, is
/// worth another tab: browsers on one machine share its cores, and a tab per core is what a
/// node gives (wasm runs one thread per tab; more tabs than cores only split the same compute —
/// on this 2-core box two local tabs gave 1.88× one, and each 1-core Grid node one tab's worth).
/// A node without tabs of the pool, or whose cores are unknown, has room.
pub fn node_has_room(tabs: usize, cores: Option<u32>) -> bool {
    match cores {
        Some(c) => tabs < (c as usize).max(1),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::{node_has_room, spread};

    #[test]
    fn a_node_has_room_for_a_tab_per_core() {
        assert!(node_has_room(0, None));
        assert!(node_has_room(0, Some(1)));
        assert!(!node_has_room(1, Some(1)), "a 1-core node with a tab is full");
        assert!(node_has_room(1, Some(2)));
        assert!(!node_has_room(2, Some(2)));
        assert!(!node_has_room(1, Some(0)), "a browser reporting no cores still has one");
    }

    #[test]
    fn each_machine_gets_one_before_any_gets_two() {
        let a = Some("node-a");
        let b = Some("node-b");
        assert_eq!(spread(&[a, a, b, b]), vec![0, 2, 1, 3]);
        assert_eq!(spread(&[a, b, a, b]), vec![0, 1, 2, 3]);
        // Local tabs are one machine: a grid node's tab comes before a second local one.
        assert_eq!(spread(&[None, None, a]), vec![0, 2, 1]);
    }

    #[test]
    fn one_machine_keeps_its_order() {
        assert_eq!(spread(&[None, None, None]), vec![0, 1, 2]);
        assert_eq!(spread(&[]), Vec::<usize>::new());
    }
}
