use std::collections::HashMap;

use super::*;

type Env = HashMap<String, String>;

fn env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn lookup(m: Env) -> impl Fn(&str) -> Option<String> {
    move |k| m.get(k).cloned()
}

const ADD: &[(&str, &str)] = &[
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "abc123"),
    ("CNI_NETNS", "/run/netns/x"),
    ("CNI_IFNAME", "eth0"),
    ("CNI_PATH", "/opt/cni/bin"),
];

fn without(mut m: Env, key: &str) -> Env {
    m.remove(key);
    m
}

fn with(mut m: Env, key: &str, value: &str) -> Env {
    m.insert(key.to_string(), value.to_string());
    m
}

#[test]
fn the_environment_is_read_and_every_problem_named() {
    let inv = parse_env(lookup(env(ADD))).expect("valid ADD");
    assert_eq!(inv.verb, Verb::Add);
    assert_eq!(
        inv.attachment,
        Some(Attachment {
            container_id: "abc123".into(),
            ifname: "eth0".into()
        })
    );
    assert_eq!(
        inv.netns.as_deref(),
        Some(std::path::Path::new("/run/netns/x"))
    );

    // Each required variable of ADD, missing: code 4 naming it.
    for k in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
        let e = parse_env(lookup(without(env(ADD), k))).expect_err(k);
        assert_eq!(e.code, code::INVALID_ENV, "{k}");
        assert!(e.details.contains(k), "{k}: {e:?}");
    }
    // Two at once: both named.
    let e = parse_env(lookup(without(
        without(env(ADD), "CNI_IFNAME"),
        "CNI_NETNS",
    )))
    .expect_err("two");
    assert!(
        e.details.contains("CNI_IFNAME") && e.details.contains("CNI_NETNS"),
        "{e:?}"
    );
    // DEL needs no namespace (it may be gone).
    let del = with(without(env(ADD), "CNI_NETNS"), "CNI_COMMAND", "DEL");
    assert_eq!(parse_env(lookup(del)).expect("DEL").netns, None);
    // GC, STATUS and VERSION need only the command.
    for verb in ["GC", "STATUS", "VERSION"] {
        let inv = parse_env(lookup(env(&[("CNI_COMMAND", verb)]))).expect(verb);
        assert_eq!(inv.attachment, None);
    }

    let bad: &[(&str, &str, &str)] = &[
        ("CNI_COMMAND", "", "CNI_COMMAND is not set"),
        ("CNI_COMMAND", "add", "CNI_COMMAND=\"add\""),
        ("CNI_CONTAINERID", "-abc", "CNI_CONTAINERID"),
        ("CNI_CONTAINERID", "a b", "CNI_CONTAINERID"),
        ("CNI_IFNAME", "eth0/1", "CNI_IFNAME"),
        ("CNI_IFNAME", "a-very-long-name0", "CNI_IFNAME"),
        ("CNI_IFNAME", "..", "CNI_IFNAME"),
        ("CNI_IFNAME", "e th", "CNI_IFNAME"),
        ("CNI_NETNS", "relative/ns", "CNI_NETNS"),
        ("CNI_ARGS", "K8S_POD_NAME", "CNI_ARGS"),
        ("CNI_ARGS", "=v", "CNI_ARGS"),
    ];
    for (k, v, named) in bad {
        let e = parse_env(lookup(with(env(ADD), k, v))).expect_err(&format!("{k}={v}"));
        assert_eq!(e.code, code::INVALID_ENV, "{k}={v}");
        assert!(e.details.contains(named), "{k}={v}: {e:?}");
    }
    let args = with(env(ADD), "CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web;");
    let inv = parse_env(lookup(args)).expect("args");
    assert_eq!(
        inv.args.get("K8S_POD_NAME").map(String::as_str),
        Some("web")
    );
}

fn conf(extra: &str) -> String {
    format!(
        r#"{{"cniVersion": "1.0.0", "name": "tern", "type": "tern",
            "controllers": ["10.0.0.1:5443"]{extra}}}"#
    )
}

#[test]
fn a_configuration_is_parsed_with_defaults() {
    let c = parse_conf(conf("").as_bytes()).expect("minimal");
    assert_eq!(c.cni_version, "1.0.0");
    assert_eq!(c.name, "tern");
    assert_eq!(c.tls, TlsConf::default());
    assert_eq!(c.tls.cert, PathBuf::from("/etc/tern/pki/node.pem"));
    assert_eq!(
        c.ipam,
        IpamConf {
            ipv4: Some(vec![]),
            ipv6: None
        }
    );
    assert_eq!(c.timeout_secs, 10);
    // Controllers named: the plugin calls them itself.
    assert_eq!(c.agent_socket, None);

    let full = conf(
        r#", "nodeName": "host1", "mtu": 1400, "timeoutSeconds": 3,
           "tls": {"ca": "/p/ca.pem", "cert": "/p/n.pem", "key": "/p/k.pem", "serverName": "ctl"},
           "ipam": {"type": "tern", "assign_ipv4": "true", "assign_ipv6": true,
                    "ipv4_pools": ["a", "b"], "ipv6_pools": ["v6"]},
           "dns": {"nameservers": ["10.0.0.53"]},
           "args": {"anything": 1}, "runtimeConfig": {"portMappings": []},
           "prevResult": {"cniVersion": "1.0.0"}"#,
    );
    let c = parse_conf(full.as_bytes()).expect("full");
    assert_eq!(c.node_name.as_deref(), Some("host1"));
    assert_eq!(c.mtu, Some(1400));
    assert_eq!(c.tls.server_name.as_deref(), Some("ctl"));
    assert_eq!(
        c.ipam,
        IpamConf {
            ipv4: Some(vec!["a".into(), "b".into()]),
            ipv6: Some(vec!["v6".into()])
        }
    );
    assert!(c.prev_result.is_some() && c.dns.is_some());

    // GC's list, under either name libcni has used.
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        let gc = conf(&format!(
            r#", "{key}": [{{"containerID": "c1", "ifname": "eth0"}}]"#
        ))
        .replace("1.0.0", "1.1.0");
        let c = parse_conf(gc.as_bytes()).expect(key);
        assert_eq!(
            c.valid_attachments,
            Some(vec![Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }])
        );
    }
}

#[test]
fn a_bad_configuration_gets_the_right_code_and_names_the_field() {
    let cases: &[(&str, u32, &str)] = &[
        ("not json", code::DECODE, ""),
        ("[1, 2]", code::DECODE, "JSON object"),
        (&conf(r#", "mtu": "big""#), code::DECODE, "mtu"),
        (
            &conf(r#", "bridge": "cni0""#),
            code::UNSUPPORTED_FIELD,
            "bridge: \"cni0\"",
        ),
        (
            &conf(r#", "ipam": {"subnet": "10.0.0.0/24"}"#),
            code::UNSUPPORTED_FIELD,
            "subnet",
        ),
        (
            &conf(r#", "tls": {"cert": "/a", "password": "x"}"#),
            code::UNSUPPORTED_FIELD,
            "password",
        ),
        (
            &conf("").replace("1.0.0", "0.4.0"),
            code::INCOMPATIBLE_VERSION,
            "0.4.0",
        ),
        (
            &conf("").replace("1.0.0", "2.0.0"),
            code::INCOMPATIBLE_VERSION,
            "1.0.0, 1.1.0",
        ),
        (
            &conf(r#", "cniVersions": ["1.1.0"]"#),
            code::INVALID_CONFIG,
            "cniVersions",
        ),
        (
            r#"{"name": "tern", "type": "tern", "controllers": ["a:1"]}"#,
            code::INVALID_CONFIG,
            "cniVersion",
        ),
        (
            &conf("").replace(r#""type": "tern""#, r#""type": "bridge""#),
            code::INVALID_CONFIG,
            "type",
        ),
        (
            &conf("").replace(r#""name": "tern""#, r#""name": "-x""#),
            code::INVALID_CONFIG,
            "name",
        ),
        (
            &conf(r#", "agentSocket": "/run/tern/cni.sock""#),
            code::INVALID_CONFIG,
            "agentSocket",
        ),
        (
            r#"{"cniVersion": "1.0.0", "name": "tern", "type": "tern", "agentSocket": "cni.sock"}"#,
            code::INVALID_CONFIG,
            "agentSocket",
        ),
        (
            r#"{"cniVersion": "1.0.0", "name": "tern", "type": "tern", "tls": {"ca": "/x"}}"#,
            code::INVALID_CONFIG,
            "tls",
        ),
        (
            &conf("").replace(r#"["10.0.0.1:5443"]"#, r#"["a b"]"#),
            code::INVALID_CONFIG,
            "controllers[0]",
        ),
        (&conf(r#", "mtu": 20"#), code::INVALID_CONFIG, "mtu"),
        (
            &conf(r#", "timeoutSeconds": 0"#),
            code::INVALID_CONFIG,
            "timeoutSeconds",
        ),
        (
            &conf(r#", "nodeName": "Bad_Node""#),
            code::INVALID_CONFIG,
            "nodeName",
        ),
        (
            &conf(r#", "ipam": {"type": "host-local"}"#),
            code::INVALID_CONFIG,
            "ipam.type",
        ),
        (
            &conf(r#", "ipam": {"assign_ipv4": "yes"}"#),
            code::INVALID_CONFIG,
            "ipam.assign_ipv4",
        ),
        (
            &conf(r#", "ipam": {"assign_ipv4": false}"#),
            code::INVALID_CONFIG,
            "nothing to assign",
        ),
        (
            &conf(r#", "ipam": {"ipv6_pools": ["p"]}"#),
            code::INVALID_CONFIG,
            "ipam.ipv6_pools",
        ),
        (
            &conf(r#", "ipam": {"ipv4_pools": ["Bad Pool"]}"#),
            code::INVALID_CONFIG,
            "ipam.ipv4_pools[0]",
        ),
    ];
    for (text, want, named) in cases {
        let e = parse_conf(text.as_bytes()).expect_err(text);
        assert_eq!(e.code, *want, "{text}: {e:?}");
        assert!(
            e.msg.contains(named) || e.details.contains(named),
            "{text}: {e:?} names {named:?}"
        );
    }
}

#[test]
fn names_derived_from_an_attachment() {
    let a = Attachment {
        container_id: "0123456789abcdef".into(),
        ifname: "eth0".into(),
    };
    let v = host_veth(&a);
    assert_eq!(v.len(), MAX_IFNAME);
    assert!(v.starts_with("cali"), "{v}");
    assert!(check_ifname(&v).is_ok());
    // Stable, and different for another interface of the same container.
    assert_eq!(v, host_veth(&a.clone()));
    let b = Attachment {
        ifname: "net1".into(),
        ..a.clone()
    };
    assert_ne!(v, host_veth(&b));
    // No ambiguity between a dot in the id and one in the interface name.
    let c1 = Attachment {
        container_id: "a.b".into(),
        ifname: "c".into(),
    };
    let c2 = Attachment {
        container_id: "a".into(),
        ifname: "b.c".into(),
    };
    assert_ne!(host_veth(&c1), host_veth(&c2));
    // The names of attachments made by earlier versions: DEL, CHECK and GC find them
    // only while the derivation stays the same (SHA-256 of "<container id>/<ifname>").
    assert_eq!(v, "cali60373cf9024");
    assert_eq!(mac_string(&container_mac(&a)), "52:ab:0e:5a:f6:47");

    let mac = container_mac(&a);
    assert_eq!(mac[0] & 0x01, 0, "unicast");
    assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
    assert_eq!(mac_string(&HOST_MAC), "ee:ee:ee:ee:ee:ee");
    assert_eq!(gateway_v6().to_string(), "fe80::ecee:eeff:feee:eeee");

    let h = handle("tern", &a);
    assert_eq!(h, "cni/tern/0123456789abcdef/eth0");
    assert_eq!(parse_handle("tern", &h), Some(a.clone()));
    assert_eq!(parse_handle("other", &h), None);
    assert_eq!(parse_handle("tern", "cni/tern/only-id"), None);
    assert_eq!(parse_handle("tern", "lab-pod-a"), None);
    assert!(h.len() <= 256);
}

fn made(addresses: &[&str]) -> Made {
    Made {
        host_veth: "cali0123456789a".into(),
        ifname: "eth0".into(),
        container_mac: [0x02, 1, 2, 3, 4, 5],
        netns: "/run/netns/x".into(),
        addresses: addresses.iter().map(|a| a.parse().expect("ip")).collect(),
        mtu: Some(1400),
    }
}

#[test]
fn results_for_each_family_and_version() {
    let c = parse_conf(conf("").as_bytes()).expect("conf");
    let r = build_result(&c, &made(&["10.244.0.5", "fd00::5"]));
    let v: Value = serde_json::to_value(&r).expect("json");
    assert_eq!(
        v,
        serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cali0123456789a", "mac": "ee:ee:ee:ee:ee:ee"},
                {"name": "eth0", "mac": "02:01:02:03:04:05", "sandbox": "/run/netns/x"}
            ],
            "ips": [
                {"address": "10.244.0.5/32", "gateway": "169.254.1.1", "interface": 1},
                {"address": "fd00::5/128", "gateway": "fe80::ecee:eeff:feee:eeee", "interface": 1}
            ],
            "routes": [
                {"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
                {"dst": "::/0", "gw": "fe80::ecee:eeff:feee:eeee"}
            ]
        })
    );
    // 1.1 adds the MTU; an IPv6-only result has only the IPv6 route.
    let c11 = parse_conf(conf("").replace("1.0.0", "1.1.0").as_bytes()).expect("1.1");
    let r = build_result(&c11, &made(&["fd00::7"]));
    assert_eq!(r.interfaces[1].mtu, Some(1400));
    assert_eq!(r.routes.len(), 1);
    assert_eq!(r.routes[0].dst.to_string(), "::/0");

    // CHECK reads the result back, also with another plugin's additions.
    let mut prev = build_result(&c, &made(&["10.244.0.5"]));
    prev.interfaces.insert(
        0,
        Interface {
            name: "other0".into(),
            mac: String::new(),
            sandbox: Some("/run/netns/x".into()),
            mtu: None,
        },
    );
    for ip in &mut prev.ips {
        ip.interface = ip.interface.map(|i| i + 1);
    }
    let text = serde_json::to_value(&prev).expect("json");
    let parsed = parse_prev_result(&text).expect("parse");
    let a = Attachment {
        container_id: "c".into(),
        ifname: "eth0".into(),
    };
    // The host veth of this attachment is not the one in `made`: CHECK says so.
    let e = expected_from(&parsed, &a).expect_err("foreign host veth");
    assert_eq!(e.code, code::DRIFT);
    let mut ok = parsed.clone();
    ok.interfaces[1].name = host_veth(&a);
    let want = expected_from(&ok, &a).expect("expected");
    assert_eq!(
        want.addresses,
        vec!["10.244.0.5".parse::<IpAddr>().expect("ip")]
    );
    assert_eq!(want.container_mac, "02:01:02:03:04:05");
    let bad = serde_json::json!({"cniVersion": "1.0.0", "ips": [{"address": "nope"}]});
    assert_eq!(parse_prev_result(&bad).expect_err("bad").code, code::DECODE);
}

#[test]
fn version_and_error_documents() {
    let v: Value = serde_json::from_str(&version_answer(Some("1.0.0"))).expect("json");
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(
        v["supportedVersions"],
        serde_json::json!(["1.0.0", "1.1.0"])
    );
    let v: Value = serde_json::from_str(&version_answer(None)).expect("json");
    assert_eq!(v["cniVersion"], LATEST_VERSION);
    let e = CniError::new(
        code::TRY_AGAIN_LATER,
        "cannot reach",
        "10.0.0.1:5443: refused",
    );
    let v: Value = serde_json::from_str(&e.to_json("1.0.0")).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"cniVersion": "1.0.0", "code": 11, "msg": "cannot reach",
            "details": "10.0.0.1:5443: refused"})
    );
    assert_eq!(version_of(conf("").as_bytes()).as_deref(), Some("1.0.0"));
    assert_eq!(version_of(b"nonsense"), None);
}

#[test]
fn without_controllers_the_agent_socket_serves() {
    let plain = r#"{"cniVersion": "1.0.0", "name": "tern", "type": "tern"}"#;
    let c = parse_conf(plain.as_bytes()).expect("agent mode");
    assert_eq!(c.agent_socket, Some(PathBuf::from(DEFAULT_AGENT_SOCKET)));
    assert!(c.controllers.is_empty());
    let named =
        r#"{"cniVersion": "1.0.0", "name": "tern", "type": "tern", "agentSocket": "/run/x.sock"}"#;
    let c = parse_conf(named.as_bytes()).expect("agent mode, own socket");
    assert_eq!(c.agent_socket, Some(PathBuf::from("/run/x.sock")));
}
