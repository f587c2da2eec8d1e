//! How many threads each tab's CPU executor gets: one budget per machine. Tabs × threads never
//! exceed the cores the host sees — oversubscribed wasm threads spin against each other (the
//! pool's main thread spins while its workers run; whisper.cpp's users measured 8 threads on 4
//! cores 10× slower than 4). Tabs on other machines (Grid) are budgeted by their node's cores.

/// Threads per tab when `tabs` tabs share `cores` cores: at least one, never more than 8 (a
/// kernel's parts stop paying past that on these models' sizes).
pub fn per_tab(cores: usize, tabs: usize) -> u32 {
    (cores / tabs.max(1)).clamp(1, 8) as u32
}

/// Each of `tabs` tabs' threads when they share `cores` cores, the cores left over by an uneven
/// split going to the first tabs (3 cores, 2 tabs: 2 and 1) — the sum never exceeds the cores
/// unless there are more tabs than cores (each keeps one) — and none above 8, as [`per_tab`].
pub fn shares(cores: usize, tabs: usize) -> Vec<u32> {
    let base = cores / tabs.max(1);
    let extra = cores % tabs.max(1);
    (0..tabs).map(|i| (base + usize::from(i < extra)).clamp(1, 8) as u32).collect()
}

/// The cores of this machine, as the OS reports them to the host.
pub fn local_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tabs_times_threads_stay_within_the_cores() {
        assert_eq!(per_tab(2, 1), 2);
        assert_eq!(per_tab(2, 2), 1);
        assert_eq!(per_tab(2, 3), 1, "never below one thread, even oversubscribed by tabs");
        assert_eq!(per_tab(16, 4), 4);
        assert_eq!(per_tab(64, 1), 8);
        assert_eq!(per_tab(8, 0), 8, "no tabs planned counts as one");
        for cores in 1..=16 {
            for tabs in 1..=cores {
                assert!(per_tab(cores, tabs) as usize * tabs <= cores.max(tabs), "{cores} cores, {tabs} tabs");
            }
        }
    }

    #[test]
    fn shares_use_every_core_and_never_more() {
        assert_eq!(shares(2, 1), vec![2]);
        assert_eq!(shares(2, 2), vec![1, 1]);
        assert_eq!(shares(3, 2), vec![2, 1], "the odd core goes to the first tab");
        assert_eq!(shares(2, 3), vec![1, 1, 1], "more tabs than cores: one each");
        assert_eq!(shares(64, 2), vec![8, 8]);
        assert!(shares(4, 0).is_empty());
        for cores in 1..=16 {
            for tabs in 1..=20 {
                let s = shares(cores, tabs);
                let sum: u32 = s.iter().sum();
                assert_eq!(s.len(), tabs);
                assert!(s.iter().all(|&t| (1..=8).contains(&t)));
                if tabs <= cores && cores <= 8 * tabs {
                    assert_eq!(sum as usize, cores, "{cores} cores, {tabs} tabs: every core used");
                }
                assert!(sum as usize <= cores.max(tabs), "{cores} cores, {tabs} tabs: {s:?}");
                assert!(s.iter().max().unwrap() - s.iter().min().unwrap() <= 1, "even within one thread");
            }
        }
    }
}
