//! Host-side choices for one VM that are not part of the guest's machine: which host CPUs its
//! threads run on (and at what scheduling priority), and what backs guest RAM. A snapshot does not
//! carry them; the side that builds or restores the VM chooses them.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The highest CPU number a CPU list may name: the kernel's `NR_CPUS` limit on x86_64 (a bound
/// on what a hostile list can make Kestrel allocate, not a statement about this host).
pub const MAX_CPU: u32 = 8191;
/// The highest NUMA node number accepted (the kernel's `MAX_NUMNODES` on x86_64).
pub const MAX_NUMA_NODE: u32 = 1023;
/// The highest `SCHED_FIFO` priority.
pub const MAX_RT_PRIORITY: u8 = 99;
/// The longest CPU list text parsed; longer input is refused before it is looked at.
const MAX_CPU_LIST_BYTES: usize = 4096;

/// A set of host CPUs, written as the kernel writes them (`0-3,8`); in JSON, a list of numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<u32>", into = "Vec<u32>")]
pub struct CpuSet(BTreeSet<u32>);

/// Why a CPU list (`--cpus ...,pin=`, `others=`, or an API field) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    #[error("a CPU list must not be empty")]
    Empty,
    #[error("a CPU list is at most {MAX_CPU_LIST_BYTES} bytes")]
    TooLong,
    #[error("'{0}' is not a CPU number or a range like 0-3")]
    Syntax(String),
    #[error("CPU {0} is beyond the highest CPU number Kestrel accepts ({MAX_CPU})")]
    CpuTooLarge(u32),
    #[error("the range {0}-{1} runs backwards")]
    Backwards(u32, u32),
}

impl CpuSet {
    /// Parses the kernel's CPU-list syntax: comma-separated CPU numbers and inclusive ranges,
    /// such as `0-3,8`.
    pub fn parse(text: &str) -> Result<CpuSet, CpuListError> {
        if text.len() > MAX_CPU_LIST_BYTES {
            return Err(CpuListError::TooLong);
        }
        let text = text.trim();
        if text.is_empty() {
            return Err(CpuListError::Empty);
        }
        let mut cpus = BTreeSet::new();
        for item in text.split(',') {
            let number = |s: &str| -> Result<u32, CpuListError> {
                let value: u32 = s
                    .parse()
                    .ok()
                    .filter(|_| s.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| CpuListError::Syntax(item.chars().take(32).collect()))?;
                if value > MAX_CPU {
                    return Err(CpuListError::CpuTooLarge(value));
                }
                Ok(value)
            };
            match item.split_once('-') {
                Some((first, last)) => {
                    let (first, last) = (number(first)?, number(last)?);
                    if first > last {
                        return Err(CpuListError::Backwards(first, last));
                    }
                    cpus.extend(first..=last);
                }
                None => {
                    cpus.insert(number(item)?);
                }
            }
        }
        Ok(CpuSet(cpus))
    }

    /// A set of the given CPUs.
    pub fn from_cpus(cpus: impl IntoIterator<Item = u32>) -> Result<CpuSet, CpuListError> {
        let set: BTreeSet<u32> = cpus.into_iter().collect();
        match set.last() {
            None => Err(CpuListError::Empty),
            Some(&last) if last > MAX_CPU => Err(CpuListError::CpuTooLarge(last)),
            Some(_) => Ok(CpuSet(set)),
        }
    }

    /// The CPUs, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: u32) -> bool {
        self.0.contains(&cpu)
    }

    /// The CPUs of this set that `other` lacks.
    pub fn missing_from(&self, other: &CpuSet) -> Vec<u32> {
        self.0.difference(&other.0).copied().collect()
    }
}

impl TryFrom<Vec<u32>> for CpuSet {
    type Error = CpuListError;
    fn try_from(cpus: Vec<u32>) -> Result<Self, Self::Error> {
        CpuSet::from_cpus(cpus)
    }
}

impl From<CpuSet> for Vec<u32> {
    fn from(set: CpuSet) -> Vec<u32> {
        set.0.into_iter().collect()
    }
}

impl fmt::Display for CpuSet {
    /// The kernel's list form: runs of consecutive CPUs as ranges.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut cpus = self.0.iter().copied().peekable();
        let mut first = true;
        while let Some(start) = cpus.next() {
            let mut end = start;
            while cpus.peek() == Some(&(end + 1)) {
                end += 1;
                cpus.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

/// Where the VM's threads run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuPlacement {
    /// Empty: vCPUs run anywhere. One set: every vCPU runs on it. One set per vCPU: vCPU i runs
    /// on the i-th.
    pub vcpu_affinity: Vec<CpuSet>,
    /// The CPUs the VMM's other threads (main, API, device workers, I/O pools) are kept on.
    pub vmm_affinity: Option<CpuSet>,
    /// vCPU threads run `SCHED_FIFO` at this priority (1 to 99; needs CAP_SYS_NICE or an
    /// RLIMIT_RTPRIO that allows it).
    pub vcpu_realtime_priority: Option<u8>,
}

impl CpuPlacement {
    /// Whether nothing is asked for: threads keep what they inherit.
    pub fn is_default(&self) -> bool {
        *self == CpuPlacement::default()
    }

    /// The CPUs vCPU `index` is pinned to, if it is pinned.
    pub fn vcpu_set(&self, index: usize) -> Option<&CpuSet> {
        match self.vcpu_affinity.len() {
            0 => None,
            1 => self.vcpu_affinity.first(),
            _ => self.vcpu_affinity.get(index),
        }
    }

    /// Every CPU the placement names (the host must have them all).
    pub fn named_cpus(&self) -> CpuSet {
        let all = self.vcpu_affinity.iter().chain(&self.vmm_affinity).flat_map(|s| s.iter());
        CpuSet(all.collect())
    }

    /// The checks that need no host: as many sets as vCPUs (or one), a priority in range.
    pub fn validate(&self, vcpus: u8) -> Result<(), PlacementError> {
        let sets = self.vcpu_affinity.len();
        if sets > 1 && sets != usize::from(vcpus) {
            return Err(PlacementError::SetCount { sets, vcpus });
        }
        if let Some(priority) = self.vcpu_realtime_priority {
            if !(1..=MAX_RT_PRIORITY).contains(&priority) {
                return Err(PlacementError::Priority(priority));
            }
        }
        Ok(())
    }
}

/// What is wrong with a [`CpuPlacement`] or [`MemoryOptions`] on its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("vcpu_affinity has {sets} CPU sets for {vcpus} vCPUs: give one set for all, or one per vCPU")]
    SetCount { sets: usize, vcpus: u8 },
    #[error("vcpu_realtime_priority must be 1 to {MAX_RT_PRIORITY}, got {0}")]
    Priority(u8),
    #[error("guest memory of {memory} bytes is not a multiple of the {page} huge page size")]
    HugePageMultiple { memory: u64, page: HugePageSize },
    #[error(
        "{0} cannot be used with huge pages (hugetlb memory is neither transparent huge pages nor mergeable)"
    )]
    NotWithHugePages(&'static str),
    #[error("huge pages are a hugetlb memfd: they cannot be used with the anonymous backend")]
    HugePagesNotAnonymous,
    #[error("ksm merges only anonymous private memory: it cannot be used with backend=memfd")]
    KsmNeedsAnonymous,
    #[error("NUMA node {0} is beyond the highest node Kestrel accepts ({MAX_NUMA_NODE})")]
    NumaNodeTooLarge(u32),
}

/// The size of the huge pages that back guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HugePageSize {
    #[serde(rename = "2M")]
    TwoMiB,
    #[serde(rename = "1G")]
    OneGiB,
}

impl HugePageSize {
    /// The page size in bytes.
    pub fn bytes(self) -> u64 {
        match self {
            HugePageSize::TwoMiB => 2 << 20,
            HugePageSize::OneGiB => 1 << 30,
        }
    }
}

impl fmt::Display for HugePageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HugePageSize::TwoMiB => "2M",
            HugePageSize::OneGiB => "1G",
        })
    }
}

/// What guest RAM is made of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RamBackend {
    /// Private anonymous memory (the default).
    #[default]
    Anonymous,
    /// A memfd (`/memfd:kestrel-guest-ram`) mapped shared: memory another process can map.
    Memfd,
    /// A hugetlb memfd of this page size, mapped shared; the pages are reserved when the VM is
    /// built, so too few free huge pages is an error then rather than a crash later.
    HugeTlb(HugePageSize),
}

/// The kind of memory asked for by name (`backend=` on the command line, `memory_backend` in the
/// API); huge pages are asked for separately and imply a memfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Private anonymous memory.
    #[serde(alias = "anon")]
    Anonymous,
    /// A shared memfd.
    Memfd,
}

impl RamBackend {
    /// The backend a kind and a huge page size ask for together: huge pages are a (hugetlb) memfd,
    /// so they cannot be anonymous.
    pub fn choose(
        kind: Option<BackendKind>,
        huge_pages: Option<HugePageSize>,
    ) -> Result<RamBackend, PlacementError> {
        match (kind, huge_pages) {
            (Some(BackendKind::Anonymous), Some(_)) => Err(PlacementError::HugePagesNotAnonymous),
            (_, Some(size)) => Ok(RamBackend::HugeTlb(size)),
            (Some(BackendKind::Memfd), None) => Ok(RamBackend::Memfd),
            (Some(BackendKind::Anonymous) | None, None) => Ok(RamBackend::Anonymous),
        }
    }
}

/// How guest RAM is allocated and advised.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryOptions {
    pub backend: RamBackend,
    /// Transparent huge pages (`MADV_HUGEPAGE`).
    pub thp: bool,
    /// Same-page merging (`MADV_MERGEABLE`; the host's KSM must be running for it to merge).
    pub ksm: bool,
    /// Lock guest RAM in host memory as the guest faults it in (`mlock2(MLOCK_ONFAULT)`).
    pub mlock: bool,
    /// Bind guest RAM to this host NUMA node (`mbind(MPOL_BIND)` before the first touch), and the
    /// vCPUs that are not pinned otherwise to the node's CPUs.
    pub numa_node: Option<u32>,
}

impl MemoryOptions {
    /// The checks that need no host.
    pub fn validate(&self, memory_bytes: u64) -> Result<(), PlacementError> {
        if let RamBackend::HugeTlb(page) = self.backend {
            if !memory_bytes.is_multiple_of(page.bytes()) {
                return Err(PlacementError::HugePageMultiple { memory: memory_bytes, page });
            }
            if self.thp {
                return Err(PlacementError::NotWithHugePages("thp"));
            }
            if self.ksm {
                return Err(PlacementError::NotWithHugePages("ksm"));
            }
        }
        if self.ksm && self.backend == RamBackend::Memfd {
            return Err(PlacementError::KsmNeedsAnonymous);
        }
        if let Some(node) = self.numa_node.filter(|&n| n > MAX_NUMA_NODE) {
            return Err(PlacementError::NumaNodeTooLarge(node));
        }
        Ok(())
    }
}

/// The host-side choices of one VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostResources {
    pub cpus: CpuPlacement,
    pub memory: MemoryOptions,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn set(cpus: &[u32]) -> CpuSet {
        CpuSet::from_cpus(cpus.iter().copied()).unwrap()
    }

    #[test]
    fn cpu_lists_parse_as_the_kernel_writes_them() {
        assert_eq!(CpuSet::parse("0-3,8").unwrap(), set(&[0, 1, 2, 3, 8]));
        assert_eq!(CpuSet::parse("1").unwrap(), set(&[1]));
        assert_eq!(CpuSet::parse("2,1,1").unwrap(), set(&[1, 2]));
        assert_eq!(CpuSet::parse("0-3,8").unwrap().to_string(), "0-3,8");
        assert_eq!(CpuSet::parse("").unwrap_err(), CpuListError::Empty);
        assert_eq!(CpuSet::parse("3-1").unwrap_err(), CpuListError::Backwards(3, 1));
        assert_eq!(CpuSet::parse("9000").unwrap_err(), CpuListError::CpuTooLarge(9000));
        for bad in ["a", "1,", ",1", "1-", "-1", "1-2-3", "+1", "1 2", "0x1"] {
            assert!(matches!(CpuSet::parse(bad), Err(CpuListError::Syntax(_))), "{bad}");
        }
        assert_eq!(CpuSet::parse(&"1,".repeat(3000)).unwrap_err(), CpuListError::TooLong);
        assert!(serde_json::from_str::<CpuSet>("[]").is_err());
        assert_eq!(serde_json::from_str::<CpuSet>("[3,1]").unwrap(), set(&[1, 3]));
    }

    #[test]
    fn placement_validation_names_the_problem() {
        let two = CpuPlacement { vcpu_affinity: vec![set(&[0]), set(&[1])], ..Default::default() };
        assert_eq!(two.validate(2), Ok(()));
        assert_eq!(two.vcpu_set(1), Some(&set(&[1])));
        assert_eq!(two.validate(3), Err(PlacementError::SetCount { sets: 2, vcpus: 3 }));
        let one = CpuPlacement { vcpu_affinity: vec![set(&[0, 1])], ..Default::default() };
        assert_eq!(one.validate(4), Ok(()));
        assert_eq!(one.vcpu_set(3), Some(&set(&[0, 1])));
        let rt = CpuPlacement { vcpu_realtime_priority: Some(0), ..Default::default() };
        assert_eq!(rt.validate(1), Err(PlacementError::Priority(0)));
        let rt = CpuPlacement { vcpu_realtime_priority: Some(100), ..Default::default() };
        assert_eq!(rt.validate(1), Err(PlacementError::Priority(100)));
    }

    #[test]
    fn memory_validation_names_the_problem() {
        let huge = MemoryOptions { backend: RamBackend::HugeTlb(HugePageSize::TwoMiB), ..Default::default() };
        assert_eq!(huge.validate(64 << 20), Ok(()));
        let message = huge.validate((64 << 20) + 4096).unwrap_err().to_string();
        assert!(message.contains("not a multiple of the 2M huge page size"), "{message}");
        let gig = MemoryOptions { backend: RamBackend::HugeTlb(HugePageSize::OneGiB), ..Default::default() };
        assert!(gig.validate(512 << 20).is_err());
        let thp = MemoryOptions { thp: true, ..huge.clone() };
        assert_eq!(thp.validate(64 << 20), Err(PlacementError::NotWithHugePages("thp")));
        let ksm = MemoryOptions { backend: RamBackend::Memfd, ksm: true, ..Default::default() };
        assert_eq!(ksm.validate(64 << 20), Err(PlacementError::KsmNeedsAnonymous));
        let numa = MemoryOptions { numa_node: Some(5000), ..Default::default() };
        assert_eq!(numa.validate(64 << 20), Err(PlacementError::NumaNodeTooLarge(5000)));
        let two = Some(HugePageSize::TwoMiB);
        assert_eq!(RamBackend::choose(None, two), Ok(RamBackend::HugeTlb(HugePageSize::TwoMiB)));
        assert_eq!(RamBackend::choose(Some(BackendKind::Memfd), None), Ok(RamBackend::Memfd));
        assert_eq!(RamBackend::choose(None, None), Ok(RamBackend::Anonymous));
        assert_eq!(
            RamBackend::choose(Some(BackendKind::Anonymous), two),
            Err(PlacementError::HugePagesNotAnonymous)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Any text: an answer, never a panic; what parses prints back to a list that parses to
        /// the same set.
        #[test]
        fn any_text_parses_or_is_refused(text in "[0-9,\\- a]{0,40}") {
            if let Ok(parsed) = CpuSet::parse(&text) {
                prop_assert_eq!(CpuSet::parse(&parsed.to_string()).unwrap(), parsed);
            }
        }

        #[test]
        fn sets_round_trip_through_their_list_form(cpus in proptest::collection::btree_set(0u32..=MAX_CPU, 1..64)) {
            let parsed = CpuSet::parse(&CpuSet(cpus.clone()).to_string()).unwrap();
            prop_assert_eq!(parsed.0, cpus);
        }
    }
}
