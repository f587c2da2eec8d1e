//! How many threads each tab's CPU executor gets: one budget per machine. Tabs × threads never
//! exceed the cores the host sees — oversubscribed wasm threads spin against each other (the
//! pool's main thread spins while its workers run; whisper.cpp's users measured 8 threads on 4
//! cores 10× slower than 4). Tabs on other machines (Grid) are budgeted by their node's cores.

/// Threads per tab when `tabs` tabs share `cores` cores: at least one, never more than 8 (a
/// kernel's parts stop paying past that on these models' sizes).
pub fn per_tab(cores: usize, tabs: usize) -> u32 {
    (cores / tabs.max(1)).clamp(1, 8) as u32
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
}
