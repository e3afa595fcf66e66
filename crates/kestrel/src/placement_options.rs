//! The values of `--cpus N[,pin=SET][,others=SET][,rt=PRIO]` and
//! `--memory SIZE[,backend=anon|memfd][,hugepages=2M|1G][,thp=on][,ksm=on][,mlock=on][,numa=N]`:
//! the count or size first, then `key=value` items, parsed into the VM's host resources.

use model::host::{
    BackendKind, CpuListError, CpuPlacement, CpuSet, HugePageSize, MemoryOptions, PlacementError, RamBackend,
    MAX_RT_PRIORITY,
};

use crate::size::{parse_size, SizeError};

/// The syntax of `--cpus`, as messages and the help quote it.
pub const CPUS_FORM: &str = "N[,pin=SET|SET:SET:...][,others=SET][,rt=PRIO]";
/// The syntax of `--memory`, as messages and the help quote it.
pub const MEMORY_FORM: &str =
    "SIZE[,backend=anon|memfd][,hugepages=2M|1G][,thp=on][,ksm=on][,mlock=on][,numa=NODE]";
/// The longest flag value looked at.
const MAX_VALUE_BYTES: usize = 8192;

/// `--cpus`: the vCPU count and where the threads run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpusOption {
    pub count: u8,
    /// Boxed: it is rarely given, and the command line's arguments stay small.
    pub placement: Box<CpuPlacement>,
}

/// `--memory`: the guest's RAM and what backs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryOption {
    pub bytes: u64,
    pub options: MemoryOptions,
}

/// What is wrong with a `--cpus` or `--memory` value (clap prints it after the flag).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementOptionError {
    #[error("the value is longer than {MAX_VALUE_BYTES} bytes")]
    TooLong,
    #[error("'{0}' is not a vCPU count from 1 to 254")]
    Count(String),
    #[error("'{item}' is not KEY=VALUE; the form is {form}")]
    NotKeyValue { item: String, form: &'static str },
    #[error("unknown key '{key}'; the form is {form}")]
    UnknownKey { key: String, form: &'static str },
    #[error("{0}= is given twice")]
    Repeated(String),
    #[error("{key}=: {source}")]
    CpuList { key: &'static str, source: CpuListError },
    #[error("rt={0}: the priority must be 1 to {MAX_RT_PRIORITY}")]
    Priority(String),
    #[error("{key}={value}: the value must be one of {choices}")]
    NotAChoice { key: String, value: String, choices: &'static str },
    #[error("numa={0}: the value must be a node number")]
    Node(String),
    #[error(transparent)]
    Size(#[from] SizeError),
    #[error(transparent)]
    Invalid(#[from] PlacementError),
}

/// A flag value's first item and its `key=value` pairs.
type Split<'a> = (&'a str, Vec<(String, String)>);

/// Splits `FIRST,key=value,...` into the first item and the pairs. A CPU list's own commas
/// (`pin=0-1,4`) make items without `=`: they continue the value before them.
fn split<'a>(text: &'a str, form: &'static str) -> Result<Split<'a>, PlacementOptionError> {
    if text.len() > MAX_VALUE_BYTES {
        return Err(PlacementOptionError::TooLong);
    }
    let mut items = text.split(',');
    let first = items.next().unwrap_or_default();
    let mut pairs: Vec<(String, String)> = Vec::new();
    for item in items {
        match (item.split_once('='), pairs.last_mut()) {
            (Some((key, value)), _) => {
                if pairs.iter().any(|(seen, _)| seen == key) {
                    return Err(PlacementOptionError::Repeated(key.to_owned()));
                }
                pairs.push((key.to_owned(), value.to_owned()));
            }
            (None, Some((_, value))) => {
                value.push(',');
                value.push_str(item);
            }
            (None, None) => return Err(PlacementOptionError::NotKeyValue { item: item.to_owned(), form }),
        }
    }
    Ok((first, pairs))
}

/// `--cpus N[,pin=SET|SET:SET...][,others=SET][,rt=PRIO]`
pub fn parse_cpus(text: &str) -> Result<CpusOption, PlacementOptionError> {
    let (count, pairs) = split(text, CPUS_FORM)?;
    let count = count
        .parse::<u8>()
        .ok()
        .filter(|n| (1..=254).contains(n))
        .ok_or_else(|| PlacementOptionError::Count(count.chars().take(32).collect()))?;
    let list = |key: &'static str, value: &str| {
        CpuSet::parse(value).map_err(|source| PlacementOptionError::CpuList { key, source })
    };
    let mut placement = CpuPlacement::default();
    for (key, value) in &pairs {
        match key.as_str() {
            "pin" => {
                placement.vcpu_affinity =
                    value.split(':').map(|set| list("pin", set)).collect::<Result<_, _>>()?
            }
            "others" => placement.vmm_affinity = Some(list("others", value)?),
            "rt" => {
                let priority = value
                    .parse::<u8>()
                    .ok()
                    .filter(|p| (1..=MAX_RT_PRIORITY).contains(p))
                    .ok_or_else(|| PlacementOptionError::Priority(value.chars().take(32).collect()))?;
                placement.vcpu_realtime_priority = Some(priority);
            }
            _ => {
                return Err(PlacementOptionError::UnknownKey {
                    key: key.chars().take(32).collect(),
                    form: CPUS_FORM,
                })
            }
        }
    }
    placement.validate(count)?;
    Ok(CpusOption { count, placement: Box::new(placement) })
}

/// `--memory SIZE[,backend=anon|memfd][,hugepages=2M|1G][,thp=on][,ksm=on][,mlock=on][,numa=N]`
pub fn parse_memory(text: &str) -> Result<MemoryOption, PlacementOptionError> {
    let (size, pairs) = split(text, MEMORY_FORM)?;
    let bytes = parse_size(size)?;
    let (mut kind, mut huge, mut options) = (None, None, MemoryOptions::default());
    for (key, value) in &pairs {
        let choice = |choices: &'static str| PlacementOptionError::NotAChoice {
            key: key.clone(),
            value: value.chars().take(32).collect(),
            choices,
        };
        let on_off = |flag: &mut bool| {
            *flag = match value.as_str() {
                "on" => true,
                "off" => false,
                _ => return Err(choice("on, off")),
            };
            Ok(())
        };
        match key.as_str() {
            "backend" => {
                kind = Some(match value.as_str() {
                    "anon" => BackendKind::Anonymous,
                    "memfd" => BackendKind::Memfd,
                    _ => return Err(choice("anon, memfd")),
                })
            }
            "hugepages" => {
                huge = match value.as_str() {
                    "2M" => Some(HugePageSize::TwoMiB),
                    "1G" => Some(HugePageSize::OneGiB),
                    "off" => None,
                    _ => return Err(choice("2M, 1G, off")),
                }
            }
            "thp" => on_off(&mut options.thp)?,
            "ksm" => on_off(&mut options.ksm)?,
            "mlock" => on_off(&mut options.mlock)?,
            "numa" => {
                let node = value
                    .parse()
                    .map_err(|_| PlacementOptionError::Node(value.chars().take(32).collect()))?;
                options.numa_node = Some(node);
            }
            _ => {
                return Err(PlacementOptionError::UnknownKey {
                    key: key.chars().take(32).collect(),
                    form: MEMORY_FORM,
                })
            }
        }
    }
    options.backend = RamBackend::choose(kind, huge)?;
    options.validate(bytes)?;
    Ok(MemoryOption { bytes, options })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn set(text: &str) -> CpuSet {
        CpuSet::parse(text).unwrap()
    }

    #[test]
    fn cpus_forms() {
        assert_eq!(parse_cpus("4").unwrap(), CpusOption { count: 4, placement: Box::default() });
        let pinned = parse_cpus("2,pin=0:1,others=2-3,8,rt=10").unwrap();
        assert_eq!(pinned.placement.vcpu_affinity, [set("0"), set("1")]);
        assert_eq!(pinned.placement.vmm_affinity, Some(set("2-3,8")));
        assert_eq!(pinned.placement.vcpu_realtime_priority, Some(10));
        assert_eq!(parse_cpus("3,pin=0-1,4").unwrap().placement.vcpu_affinity, [set("0-1,4")]);
        let cases = [
            ("0", "not a vCPU count"),
            ("255", "not a vCPU count"),
            ("2,pin=0:1:2", "3 CPU sets for 2 vCPUs"),
            ("1,pin=", "must not be empty"),
            ("1,pin=3-1", "runs backwards"),
            ("1,rt=0", "rt=0: the priority must be 1 to 99"),
            ("1,rt=100", "1 to 99"),
            ("1,pin=0,pin=1", "pin= is given twice"),
            ("1,bind=0", "unknown key 'bind'"),
            ("1,others=x", "'x' is not a CPU number"),
        ];
        for (text, expected) in cases {
            let message = parse_cpus(text).unwrap_err().to_string();
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[test]
    fn memory_forms() {
        assert_eq!(
            parse_memory("512M").unwrap(),
            MemoryOption { bytes: 512 << 20, options: MemoryOptions::default() }
        );
        let huge = parse_memory("1G,hugepages=2M,mlock=on,numa=0").unwrap();
        assert_eq!(huge.options.backend, RamBackend::HugeTlb(HugePageSize::TwoMiB));
        assert!(huge.options.mlock && huge.options.numa_node == Some(0));
        let anon = parse_memory("256M,backend=anon,thp=on,ksm=on").unwrap();
        assert!(anon.options.thp && anon.options.ksm && anon.options.backend == RamBackend::Anonymous);
        assert_eq!(parse_memory("256M,backend=memfd").unwrap().options.backend, RamBackend::Memfd);
        let cases = [
            ("256M,hugepages=4M", "one of 2M, 1G, off"),
            ("513M,hugepages=2M", "not a multiple of the 2M huge page size"),
            ("512M,hugepages=1G", "not a multiple of the 1G huge page size"),
            ("256M,backend=anon,hugepages=2M", "cannot be used with the anonymous backend"),
            ("256M,backend=memfd,ksm=on", "ksm merges only"),
            ("256M,hugepages=2M,thp=on", "thp cannot be used with huge pages"),
            ("256M,numa=x", "numa=x"),
            ("256M,numa=2000", "NUMA node 2000"),
            ("256M,swap=on", "unknown key 'swap'"),
            ("256M,thp=yes", "must be one of on, off"),
        ];
        for (text, expected) in cases {
            let message = parse_memory(text).unwrap_err().to_string();
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Any value built from the flags' own vocabulary: an answer, never a panic.
        #[test]
        fn any_value_is_taken_or_refused(
            cpus in "[0-9]{1,3}(,(pin|others|rt|x)=[0-9:,\\-]{0,12}){0,4}",
            memory in "[0-9]{1,5}[KMG]?(,(backend|hugepages|thp|ksm|mlock|numa)=(anon|memfd|2M|1G|on|off|[0-9]{1,5})){0,5}",
        ) {
            if let Ok(parsed) = parse_cpus(&cpus) {
                prop_assert!(parsed.placement.validate(parsed.count).is_ok());
            }
            if let Ok(parsed) = parse_memory(&memory) {
                prop_assert!(parsed.options.validate(parsed.bytes).is_ok());
            }
        }
    }
}
