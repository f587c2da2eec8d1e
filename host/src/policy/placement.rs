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

#[cfg(test)]
mod tests {
    use super::spread;

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
