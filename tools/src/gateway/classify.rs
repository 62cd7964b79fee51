//! Classification: which rule a datagram falls under, hence its stream key, priority
//! and destination. Pure functions of the datagram's addresses and first bytes, run
//! once per flow (the receive thread caches the result in its flow table).

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{GatewayConfig, Route, Rule, StreamBy};
use crate::gateway::counters::GatewayDrop;
use crate::header::{Header, HeaderError};

/// Where a packet goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    /// One upstream.
    One(SocketAddr),
    /// A copy to each.
    All(Arc<[SocketAddr]>),
}

/// The rules and upstreams of one configuration generation.
#[derive(Debug)]
pub struct Classifier {
    /// Bumped by every reload: receive threads re-classify their flows.
    pub generation: u64,
    rules: Vec<Rule>,
    upstreams: Vec<SocketAddr>,
    broadcast: Vec<Arc<[SocketAddr]>>,
}

/// What a datagram is, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A valid load-generator header.
    Loadgen(Header),
    /// No load-generator magic: a plain client's datagram.
    Plain,
}

/// Reads the first bytes: a valid header, no header, or a counted drop.
pub fn inspect(bytes: &[u8], max_datagram: usize) -> Result<Kind, GatewayDrop> {
    if bytes.is_empty() {
        return Err(GatewayDrop::Empty);
    }
    if bytes.len() > max_datagram {
        return Err(GatewayDrop::Oversize);
    }
    match Header::parse(bytes) {
        Ok(h) => Ok(Kind::Loadgen(h)),
        Err(HeaderError::BadMagic { .. }) => Ok(Kind::Plain),
        // Shorter than a header: a plain datagram unless it starts with the magic.
        Err(HeaderError::Truncated { .. }) if !Header::has_magic(bytes) => Ok(Kind::Plain),
        Err(HeaderError::Truncated { .. }) => Err(GatewayDrop::Truncated),
        Err(HeaderError::Version { .. }) => Err(GatewayDrop::BadVersion),
        Err(HeaderError::Priority { .. }) => Err(GatewayDrop::BadPriority),
    }
}

/// The flow a datagram belongs to: what the flow table is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Sender.
    pub src: SocketAddr,
    /// Local port it arrived on.
    pub local_port: u16,
    /// Load-generator stream id, when the datagram has a header.
    pub header_stream: Option<u64>,
}

/// A classification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Class {
    /// Index of the rule that matched.
    pub rule: usize,
    /// The rule's name.
    pub rule_name: Arc<str>,
    /// Stream key (the `stream_id` of metrics).
    pub stream_key: u64,
    /// Priority the stream is opened with (after the rule's cap).
    pub priority: u8,
    /// Destination.
    pub dest: Dest,
}

/// A fixed hash (the same in every run and process), for stream keys and balancing.
pub fn stable_hash(v: impl Hash) -> u64 {
    // FNV-1a over the Hash byte stream: deterministic across runs (std's SipHasher
    // with fixed keys is not promised stable across Rust versions).
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            // A final avalanche so nearby inputs spread over the modulus.
            let mut x = self.0;
            x ^= x >> 33;
            x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
            x ^= x >> 33;
            x
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    v.hash(&mut h);
    h.finish()
}

impl Classifier {
    /// The classifier of a configuration.
    pub fn new(config: &GatewayConfig, generation: u64) -> Self {
        let upstreams: Vec<SocketAddr> = config.upstreams.iter().map(|u| u.addr).collect();
        let broadcast = config
            .rules
            .iter()
            .map(|r| match &r.route {
                Route::Broadcast(v) => v.iter().map(|&i| upstreams[i]).collect(),
                _ => Arc::from(Vec::new()),
            })
            .collect();
        Self {
            generation,
            rules: config.rules.clone(),
            upstreams,
            broadcast,
        }
    }

    /// The first rule matching, or `Unclassified`.
    pub fn classify(&self, flow: &FlowKey, kind: &Kind) -> Result<Class, GatewayDrop> {
        let (i, rule) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| matches(r, flow, kind))
            .ok_or(GatewayDrop::Unclassified)?;
        let priority = match kind {
            Kind::Loadgen(h) if rule.trust_header => h.priority.min(rule.max_priority),
            _ => rule.priority.min(rule.max_priority),
        };
        let stream_key = match (rule.stream, kind) {
            (StreamBy::Header, Kind::Loadgen(h)) => h.stream_id,
            (StreamBy::Rule, _) => stable_hash(("rule", &rule.name, priority)),
            _ => stable_hash((flow.src, flow.local_port)),
        };
        let flow_hash = stable_hash((flow.src, flow.local_port, flow.header_stream));
        let dest = match &rule.route {
            Route::To(u) => Dest::One(self.upstreams[*u]),
            Route::Balance(v) => {
                Dest::One(self.upstreams[v[(flow_hash % v.len() as u64) as usize]])
            }
            Route::PerClass(by_priority) => {
                Dest::One(self.upstreams[by_priority[usize::from(priority)]])
            }
            Route::Broadcast(_) => Dest::All(self.broadcast[i].clone()),
        };
        Ok(Class {
            rule: i,
            rule_name: Arc::from(rule.name.as_str()),
            stream_key,
            priority,
            dest,
        })
    }
}

fn matches(rule: &Rule, flow: &FlowKey, kind: &Kind) -> bool {
    if rule.dst_port.is_some_and(|p| p != flow.local_port) {
        return false;
    }
    if rule
        .source
        .as_ref()
        .is_some_and(|net| !net.contains(&flow.src.ip()))
    {
        return false;
    }
    match rule.loadgen {
        Some(true) => matches!(kind, Kind::Loadgen(_)),
        Some(false) => matches!(kind, Kind::Plain),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rules: &str) -> GatewayConfig {
        let text = format!(
            "[policy]\nversion = 1\npreset = \"default\"\n\
             [[upstream]]\nname = \"a\"\naddr = \"127.0.0.1:7101\"\n\
             [[upstream]]\nname = \"b\"\naddr = \"127.0.0.1:7102\"\n\
             [[upstream]]\nname = \"c\"\naddr = \"127.0.0.1:7103\"\n{rules}"
        );
        match GatewayConfig::from_toml(&text) {
            Ok(c) => c,
            Err(e) => panic!("test config: {e}"),
        }
    }

    fn flow(src: &str, port: u16, id: Option<u64>) -> FlowKey {
        FlowKey {
            src: src.parse().expect("addr"),
            local_port: port,
            header_stream: id,
        }
    }

    fn lg(id: u64, prio: u8) -> Kind {
        Kind::Loadgen(Header::new(id, prio, 0, 0))
    }

    #[test]
    fn capped_source_cannot_claim_priority_7() {
        let c = Classifier::new(
            &config(
                "[[rule]]\nname = \"guests\"\nsource = \"10.1.0.0/16\"\nloadgen = true\n\
                 max_priority = 3\nstream = \"header\"\nroute = { to = \"a\" }\n\
                 [[rule]]\nname = \"trusted\"\nloadgen = true\nstream = \"header\"\n\
                 route = { to = \"a\" }\n",
            ),
            1,
        );
        let guest = c
            .classify(&flow("10.1.2.3:5000", 7000, Some(9)), &lg(9, 7))
            .expect("classified");
        assert_eq!((guest.priority, guest.rule), (3, 0));
        let low = c
            .classify(&flow("10.1.2.3:5000", 7000, Some(9)), &lg(9, 1))
            .expect("classified");
        assert_eq!(low.priority, 1, "a claim below the cap stands");
        let trusted = c
            .classify(&flow("10.2.0.1:5000", 7000, Some(9)), &lg(9, 7))
            .expect("classified");
        assert_eq!((trusted.priority, trusted.rule), (7, 1));
    }

    #[test]
    fn port_and_header_rules_apply_in_order_and_the_rest_is_unclassified() {
        let c = Classifier::new(
            &config(
                "[[rule]]\nname = \"voice\"\ndst_port = 7010\npriority = 6\nroute = { to = \"b\" }\n\
                 [[rule]]\nname = \"bulk\"\nloadgen = false\ndst_port = 7000\npriority = 1\n\
                 route = { to = \"a\" }\n",
            ),
            1,
        );
        let v = c
            .classify(&flow("127.0.0.1:4000", 7010, None), &Kind::Plain)
            .expect("voice");
        assert_eq!(
            (v.priority, v.dest.clone()),
            (6, Dest::One("127.0.0.1:7102".parse().expect("a")))
        );
        let b = c
            .classify(&flow("127.0.0.1:4000", 7000, None), &Kind::Plain)
            .expect("bulk");
        assert_eq!(b.priority, 1);
        assert_eq!(
            c.classify(&flow("127.0.0.1:4000", 7000, Some(1)), &lg(1, 7)),
            Err(GatewayDrop::Unclassified),
            "a loadgen datagram on 7000 matches no rule"
        );
    }

    #[test]
    fn balance_keeps_a_flow_on_one_upstream_and_spreads_flows() {
        let c = Classifier::new(
            &config("[[rule]]\nname = \"all\"\nroute = { balance = [\"a\", \"b\", \"c\"] }\n"),
            1,
        );
        let mut used = std::collections::HashMap::new();
        for port in 0..300u16 {
            let f = flow(&format!("127.0.0.1:{}", 20_000 + port), 7000, None);
            let first = c.classify(&f, &Kind::Plain).expect("c").dest;
            for _ in 0..3 {
                assert_eq!(c.classify(&f, &Kind::Plain).expect("c").dest, first);
            }
            *used.entry(format!("{first:?}")).or_insert(0u32) += 1;
        }
        assert_eq!(used.len(), 3, "{used:?}");
        assert!(used.values().all(|&n| n > 60), "300 flows spread: {used:?}");
    }

    #[test]
    fn per_class_routes_by_tier_and_broadcast_names_every_upstream() {
        let c = Classifier::new(
            &config(
                "[[rule]]\nname = \"lg\"\nloadgen = true\nstream = \"header\"\n\
                 route = { per_class = { High = \"a\", Medium = \"b\", Low = \"c\" } }\n\
                 [[rule]]\nname = \"copy\"\nroute = { broadcast = [\"a\", \"c\"] }\n",
            ),
            1,
        );
        let to = |p| {
            c.classify(&flow("127.0.0.1:1", 7000, Some(1)), &lg(1, p))
                .expect("c")
                .dest
        };
        assert_eq!(to(7), Dest::One("127.0.0.1:7101".parse().expect("a")));
        assert_eq!(to(4), Dest::One("127.0.0.1:7102".parse().expect("a")));
        assert_eq!(to(0), Dest::One("127.0.0.1:7103".parse().expect("a")));
        match c
            .classify(&flow("127.0.0.1:1", 7000, None), &Kind::Plain)
            .expect("c")
            .dest
        {
            Dest::All(v) => assert_eq!(
                &v[..],
                &[
                    "127.0.0.1:7101".parse().expect("a"),
                    "127.0.0.1:7103".parse().expect("a")
                ]
            ),
            d => panic!("not broadcast: {d:?}"),
        }
    }

    #[test]
    fn s9_inspect_counts_every_bad_datagram_by_reason() {
        assert_eq!(inspect(&[], 100), Err(GatewayDrop::Empty));
        assert_eq!(inspect(&[1; 101], 100), Err(GatewayDrop::Oversize));
        assert_eq!(inspect(b"hello", 100), Ok(Kind::Plain));
        let h = Header::new(1, 2, 3, 4).encode();
        assert_eq!(inspect(&h[..10], 100), Err(GatewayDrop::Truncated));
        let mut v = h;
        v[4] = 9;
        assert_eq!(inspect(&v, 100), Err(GatewayDrop::BadVersion));
        let mut p = h;
        p[5] = 8;
        assert_eq!(inspect(&p, 100), Err(GatewayDrop::BadPriority));
        assert!(matches!(inspect(&h, 100), Ok(Kind::Loadgen(_))));
    }

    #[test]
    fn per_class_must_name_every_tier() {
        let text = "[policy]\nversion = 1\n[[upstream]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n\
                    [[rule]]\nname = \"x\"\nroute = { per_class = { High = \"a\" } }\n";
        let e = GatewayConfig::from_toml(text).expect_err("Medium and Low missing");
        assert!(e.to_string().contains("rule[0].route.per_class"), "{e}");
    }
}
