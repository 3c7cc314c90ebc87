//! The resource API against a real etcd and a real controller over mutual TLS.

mod common;

use common::{Cluster, pool, raw, res};
use tern::pki::Role;
use tern::proto::{self, PatchType};
use tonic::Code;
use tonic_types::StatusExt as _;

fn get(kind: &str, name: &str) -> proto::GetRequest {
    proto::GetRequest {
        kind: kind.into(),
        name: name.into(),
        show_secrets: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_every_kind_with_defaults() {
    let c = Cluster::start().await;
    let mut api = c.admin().await;
    let docs = [
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p4, labels: {team: a}}\nspec: {cidr: 10.244.0.0/16, natOutgoing: true}\n",
        "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: p6}\nspec: {cidr: 'fd00:10::/48'}\n",
        "apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: '10.0.0.254:1790', asNumber: '1.10', nodeSelector: \"rack == 'r1'\"}\n",
        "apiVersion: tern.dev/v1\nkind: BGPConfiguration\nmetadata: {name: node.n1}\nspec: {listenPort: 1790}\n",
        "apiVersion: tern.dev/v1\nkind: BGPFilter\nmetadata: {name: f}\nspec: {exportV4: [{action: Accept, matchOperator: In, cidr: 10.0.0.0/8}]}\n",
        "apiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: n1, labels: {rack: r1}}\nspec: {bgp: {ipv4Address: 10.0.0.1/24}}\n",
        "apiVersion: tern.dev/v1\nkind: BlockAffinity\nmetadata: {name: n1-10-244-0-0-26}\nspec: {node: n1, cidr: 10.244.0.0/26, state: confirmed}\n",
        "apiVersion: tern.dev/v1\nkind: AgentConfiguration\nmetadata: {name: default}\nspec: {natPortRange: '32768:65535', dataplane: nftables}\n",
        "apiVersion: tern.dev/v1\nkind: Secret\nmetadata: {name: s}\nstringData: {password: hunter2}\n",
    ];
    for d in docs {
        let r = api
            .create(proto::CreateRequest {
                resource: Some(res(d)),
            })
            .await
            .unwrap_or_else(|e| panic!("create {d}: {e}"))
            .into_inner();
        let meta = r.metadata.expect("metadata");
        assert!(!meta.resource_version.is_empty());
        assert!(!meta.uid.is_empty());
        assert!(!meta.creation_timestamp.is_empty());
        let got = api
            .get(get(&r.kind, &meta.name))
            .await
            .expect("get")
            .into_inner();
        assert_eq!(
            got.metadata.expect("meta").resource_version,
            meta.resource_version
        );
    }
    // Calico's defaults are filled in.
    let p = api
        .get(get("ippool", "p6"))
        .await
        .expect("get")
        .into_inner();
    let spec = serde_json::Value::Object(tern::model::protojson::struct_to_json_map(
        &p.spec.expect("spec"),
    ));
    assert_eq!(spec["blockSize"], 122);
    assert_eq!(spec["nodeSelector"], "all()");
    assert_eq!(spec["natOutgoing"], false);
    assert_eq!(p.api_version, "tern.dev/v1");
    // asdot became a number.
    let peer = api
        .get(get("BGPPeer", "tor"))
        .await
        .expect("get")
        .into_inner();
    let spec = tern::model::protojson::struct_to_json_map(&peer.spec.expect("spec"));
    assert_eq!(spec["asNumber"], 65546);
    // The controller created the default BGPConfiguration.
    let d = api
        .get(get("bgpconfig", "default"))
        .await
        .expect("default exists")
        .into_inner();
    let spec = tern::model::protojson::struct_to_json_map(&d.spec.expect("spec"));
    assert_eq!(spec["asNumber"], 64512);
    assert_eq!(spec["nodeToNodeMeshEnabled"], true);

    // Secrets are redacted unless asked.
    let s = api.get(get("secret", "s")).await.expect("get").into_inner();
    assert_eq!(s.data["password"], "<redacted>");
    let s = api
        .get(proto::GetRequest {
            kind: "secret".into(),
            name: "s".into(),
            show_secrets: true,
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(s.data["password"], "hunter2");

    // List with a label selector.
    let l = api
        .list(proto::ListRequest {
            kind: "ippool".into(),
            label_selector: "team == 'a'".into(),
            show_secrets: false,
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(l.items.len(), 1);
    assert!(l.revision > 0);
    let all = api
        .list(proto::ListRequest::default())
        .await
        .expect("list all")
        .into_inner();
    // Every document and the default BGPConfiguration (and any blocks IPAM claimed).
    let not_blocks = all
        .items
        .iter()
        .filter(|r| {
            r.kind != "BlockAffinity"
                || r.metadata
                    .as_ref()
                    .is_some_and(|m| m.name == "n1-10-244-0-0-26")
        })
        .count();
    assert_eq!(not_blocks, docs.len() + 1);

    // Update (unconditional), patch (merge and json), apply, delete.
    let mut p4 = api
        .get(get("ippool", "p4"))
        .await
        .expect("get")
        .into_inner();
    p4.metadata.as_mut().expect("meta").resource_version.clear();
    p4.metadata
        .as_mut()
        .expect("meta")
        .labels
        .insert("team".into(), "b".into());
    let up = api
        .update(proto::UpdateRequest { resource: Some(p4) })
        .await
        .expect("update")
        .into_inner();
    assert_eq!(up.metadata.expect("meta").labels["team"], "b");
    let patched = api
        .patch(proto::PatchRequest {
            kind: "ippool".into(),
            name: "p4".into(),
            r#type: PatchType::Merge as i32,
            patch: r#"{"spec":{"natOutgoing": false}}"#.into(),
            resource_version: String::new(),
        })
        .await
        .expect("merge patch")
        .into_inner();
    let spec = tern::model::protojson::struct_to_json_map(&patched.spec.expect("spec"));
    assert_eq!(spec["natOutgoing"], false);
    let patched = api
        .patch(proto::PatchRequest {
            kind: "ippool".into(),
            name: "p4".into(),
            r#type: PatchType::Json as i32,
            patch: r#"[{"op":"replace","path":"/spec/disabled","value":true}]"#.into(),
            resource_version: String::new(),
        })
        .await
        .expect("json patch")
        .into_inner();
    let spec = tern::model::protojson::struct_to_json_map(&patched.spec.expect("spec"));
    assert_eq!(spec["disabled"], true);
    let applied = api
        .apply(proto::ApplyRequest {
            resource: Some(pool("p7", "10.250.0.0/16")),
        })
        .await
        .expect("apply creates")
        .into_inner();
    assert!(applied.created);
    let applied = api
        .apply(proto::ApplyRequest {
            resource: Some(pool("p7", "10.250.0.0/16")),
        })
        .await
        .expect("apply replaces")
        .into_inner();
    assert!(!applied.created);
    api.delete(proto::DeleteRequest {
        kind: "ippool".into(),
        name: "p7".into(),
        resource_version: String::new(),
    })
    .await
    .expect("delete");
    let e = api.get(get("ippool", "p7")).await.expect_err("gone");
    assert_eq!(e.code(), Code::NotFound);
}

/// The fields of a write's response that say what was stored without effect.
fn warned(r: &proto::Resource) -> Vec<String> {
    r.warnings
        .iter()
        .map(|w| format!("{}: {}", w.field, w.message))
        .collect()
}

/// Create, update, patch and apply answer with one warning per field tern stores
/// without acting on, so any gRPC client (grpcurl, Python) sees them; reads carry none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_answer_with_one_warning_per_stored_only_field() {
    let c = Cluster::start().await;
    let mut api = c.admin().await;
    let ipip = "spec.ipipMode: stored; tern builds no IPIP tunnels";
    let vxlan = "spec.vxlanMode: stored; tern builds no VXLAN tunnels";
    let created = api
        .create(proto::CreateRequest {
            resource: Some(res(
                "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.244.0.0/16, ipipMode: Always, vxlanMode: Never}\n",
            )),
        })
        .await
        .expect("create")
        .into_inner();
    assert_eq!(
        warned(&created),
        [ipip],
        "vxlanMode: Never asks for nothing"
    );

    let mut next = created.clone();
    next.warnings.clear();
    let mut spec = next.spec.take().expect("spec");
    spec.fields.insert(
        "namespaceSelector".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("team == 'a'".into())),
        },
    );
    next.spec = Some(spec);
    let updated = api
        .update(proto::UpdateRequest {
            resource: Some(next),
        })
        .await
        .expect("update")
        .into_inner();
    let ns = "spec.namespaceSelector: stored; tern knows no namespaces: the pool serves every workload its nodeSelector allows";
    assert_eq!(warned(&updated), [ipip, ns]);

    let patched = api
        .patch(proto::PatchRequest {
            kind: "ippool".into(),
            name: "p".into(),
            r#type: PatchType::Merge as i32,
            patch: r#"{"spec":{"ipipMode": "Never", "vxlanMode": "Always"}}"#.into(),
            resource_version: String::new(),
        })
        .await
        .expect("patch")
        .into_inner();
    assert_eq!(warned(&patched), [vxlan, ns]);

    let applied = api
        .apply(proto::ApplyRequest {
            resource: Some(res(
                "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: workloads}\nspec: {localWorkloadSelector: app == 'lb', asNumber: 65001}\n",
            )),
        })
        .await
        .expect("apply")
        .into_inner()
        .resource
        .expect("resource");
    assert_eq!(
        warned(&applied),
        ["spec.localWorkloadSelector: stored; tern makes no BGP sessions with workloads"]
    );

    let got = api.get(get("ippool", "p")).await.expect("get").into_inner();
    assert!(got.warnings.is_empty(), "a read carries no warnings");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_version_preconditions() {
    let c = Cluster::start().await;
    let mut api = c.admin().await;
    let created = api
        .create(proto::CreateRequest {
            resource: Some(pool("p", "10.1.0.0/16")),
        })
        .await
        .expect("create")
        .into_inner();
    let rv = created.metadata.clone().expect("meta").resource_version;
    let e = api
        .create(proto::CreateRequest {
            resource: Some(pool("p", "10.9.0.0/16")),
        })
        .await
        .expect_err("duplicate");
    assert_eq!(e.code(), Code::AlreadyExists);
    // A conditional update with the current version works, then the old one fails.
    let mut next = created.clone();
    next.metadata
        .as_mut()
        .expect("meta")
        .labels
        .insert("a".into(), "b".into());
    let updated = api
        .update(proto::UpdateRequest {
            resource: Some(next.clone()),
        })
        .await
        .expect("cas update")
        .into_inner();
    let new_rv = updated.metadata.expect("meta").resource_version;
    assert_ne!(new_rv, rv);
    let before = c.etcd_dump().await;
    let e = api
        .update(proto::UpdateRequest {
            resource: Some(next),
        })
        .await
        .expect_err("stale update");
    assert_eq!(e.code(), Code::Aborted, "{e}");
    let e = api
        .delete(proto::DeleteRequest {
            kind: "ippool".into(),
            name: "p".into(),
            resource_version: rv.clone(),
        })
        .await
        .expect_err("stale delete");
    assert_eq!(e.code(), Code::Aborted);
    let e = api
        .patch(proto::PatchRequest {
            kind: "ippool".into(),
            name: "p".into(),
            r#type: 0,
            patch: r#"{"spec":{"natOutgoing":true}}"#.into(),
            resource_version: rv,
        })
        .await
        .expect_err("stale patch");
    assert_eq!(e.code(), Code::Aborted);
    assert_eq!(
        c.etcd_dump().await,
        before,
        "rejected writes stored nothing"
    );
    api.delete(proto::DeleteRequest {
        kind: "ippool".into(),
        name: "p".into(),
        resource_version: new_rv,
    })
    .await
    .expect("delete with the current version");
    let e = api
        .delete(proto::DeleteRequest {
            kind: "ippool".into(),
            name: "p".into(),
            resource_version: String::new(),
        })
        .await
        .expect_err("already gone");
    assert_eq!(e.code(), Code::NotFound);
}

/// Each bad input gets the exact status, names the field, and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_precise_error_and_changes_nothing() {
    // Without automatic blocks, nothing but the API writes to etcd during the test.
    let mut c = Cluster::without_controller();
    let mut cfg = c.controller_config();
    cfg.ipam.auto_blocks = false;
    c.add_controller_with(cfg).await;
    let mut api = c.admin().await;
    api.create(proto::CreateRequest {
        resource: Some(pool("existing", "10.0.0.0/16")),
    })
    .await
    .expect("seed pool");
    api.create(proto::CreateRequest {
        resource: Some(res("apiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: n1}\nspec: {bgp: {ipv4Address: 10.1.0.1/24}}\n")),
    })
    .await
    .expect("seed node");
    let cases: &[(&str, &str, &str)] = &[
        (
            "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.1/8}\n",
            "spec.cidr",
            "10.0.0.1/8 is not a network address; did you mean 10.0.0.0/8?",
        ),
        (
            "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {natOutgoing: true}\n",
            "spec.cidr",
            "required",
        ),
        (
            "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.128.0/17}\n",
            "spec.cidr",
            "overlaps",
        ),
        (
            "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 169.254.0.0/16}\n",
            "spec.cidr",
            "link-local",
        ),
        (
            "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.5.0.0/16, blockSize: 19}\n",
            "spec.blockSize",
            "",
        ),
        (
            "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.5.0.0/16, ipipMode: Always, vxlanMode: Always}\n",
            "spec",
            "",
        ),
        (
            "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 'fd00::/48', ipipMode: Always}\n",
            "spec.ipipMode",
            "",
        ),
        (
            "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.5.0.0/16, natOutgoin: true}\n",
            "spec.natOutgoin",
            "unknown field",
        ),
        (
            "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: Bad_Name}\nspec: {cidr: 10.5.0.0/16}\n",
            "metadata.name",
            "",
        ),
        (
            "apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: x}\nspec: {peerIP: 10.0.0.1, asNumber: 0}\n",
            "spec.asNumber",
            "",
        ),
        (
            "apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: x}\nspec: {peerIP: 10.0.0.1, peerSelector: all(), asNumber: 1}\n",
            "spec",
            "",
        ),
        (
            "apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: x}\nspec: {node: a, nodeSelector: all(), peerIP: 10.0.0.1, asNumber: 1}\n",
            "spec",
            "",
        ),
        (
            "apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: x}\nspec: {nodeSelector: 'has(a', peerIP: 10.0.0.1, asNumber: 1}\n",
            "spec.nodeSelector",
            "position",
        ),
        (
            "apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: x}\nspec: {peerIP: 10.0.0.1, asNumber: 1, keepOriginalNextHop: true, nextHopMode: Self}\n",
            "spec",
            "",
        ),
        (
            "apiVersion: tern.dev/v1\nkind: BGPConfiguration\nmetadata: {name: other}\nspec: {}\n",
            "metadata.name",
            "",
        ),
        (
            "apiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: n2}\nspec: {bgp: {ipv4Address: 'fd00::1/64'}}\n",
            "spec.bgp.ipv4Address",
            "",
        ),
        (
            "apiVersion: tern.dev/v1\nkind: Pod\nmetadata: {name: x}\n",
            "kind",
            "unknown kind",
        ),
        (
            "apiVersion: example.com/v9\nkind: IPPool\nmetadata: {name: x}\nspec: {cidr: 10.9.0.0/16}\n",
            "apiVersion",
            "",
        ),
    ];
    for (doc, field, reason) in cases {
        let before = c.etcd_dump().await;
        let e = api
            .create(proto::CreateRequest {
                resource: Some(raw(doc)),
            })
            .await
            .expect_err(doc);
        assert_eq!(e.code(), Code::InvalidArgument, "{doc}: {e}");
        assert!(e.message().contains(field), "{doc}: {}", e.message());
        assert!(e.message().contains(reason), "{doc}: {}", e.message());
        let details = e.get_details_bad_request().expect("BadRequest detail");
        assert!(
            details
                .field_violations
                .iter()
                .any(|v| v.field.starts_with(field)),
            "{doc}: {details:?}"
        );
        assert_eq!(c.etcd_dump().await, before, "{doc}: nothing stored");
    }

    // Immutable fields, through update and through patch.
    let before = c.etcd_dump().await;
    let e = api
        .update(proto::UpdateRequest {
            resource: Some(pool("existing", "10.9.0.0/16")),
        })
        .await
        .expect_err("cidr is immutable");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("spec.cidr"), "{e}");
    for (ty, patch, field) in [
        (
            PatchType::Merge,
            r#"{"spec":{"blockSize":28}}"#,
            "spec.blockSize",
        ),
        (
            PatchType::Json,
            r#"[{"op":"replace","path":"/spec/cidr","value":"10.0.0.0/8"}]"#,
            "spec.cidr",
        ),
        (
            PatchType::Merge,
            r#"{"spec":{"cidr":"10.0.0.1/16"}}"#,
            "spec.cidr",
        ),
        (
            PatchType::Merge,
            r#"{"metadata":{"name":"renamed"}}"#,
            "metadata.name",
        ),
        (PatchType::Merge, r#"{"spec": "#, "patch"),
        (
            PatchType::Json,
            r#"[{"op":"remove","path":"/spec/nope"}]"#,
            "patch",
        ),
    ] {
        let e = api
            .patch(proto::PatchRequest {
                kind: "ippool".into(),
                name: "existing".into(),
                r#type: ty as i32,
                patch: patch.into(),
                resource_version: String::new(),
            })
            .await
            .expect_err(patch);
        assert_eq!(e.code(), Code::InvalidArgument, "{patch}: {e}");
        assert!(e.message().contains(field), "{patch}: {}", e.message());
    }
    // Request-level errors.
    let e = api.get(get("gizmo", "x")).await.expect_err("unknown kind");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("kind:"), "{e}");
    let e = api.get(get("ippool", "")).await.expect_err("no name");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = api
        .list(proto::ListRequest {
            kind: "ippool".into(),
            label_selector: "a ==".into(),
            show_secrets: false,
        })
        .await
        .expect_err("bad selector");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("position"), "{e}");
    // Selectors built to exhaust the parser's stack are refused, and the replica lives.
    for hostile in ["!".repeat(10_000) + "has(a)", "(".repeat(200_000)] {
        let e = api
            .list(proto::ListRequest {
                kind: "ippool".into(),
                label_selector: hostile,
                show_secrets: false,
            })
            .await
            .expect_err("hostile selector");
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    }
    api.list(proto::ListRequest {
        kind: "ippool".into(),
        label_selector: String::new(),
        show_secrets: false,
    })
    .await
    .expect("the controller still answers");
    let e = api
        .create(proto::CreateRequest {
            resource: Some(pool("big", "10.77.0.0/16")).map(|mut r| {
                r.metadata
                    .as_mut()
                    .expect("meta")
                    .annotations
                    .insert("blob".into(), "x".repeat(600 * 1024));
                r
            }),
        })
        .await
        .expect_err("too large");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let e = api
        .create(proto::CreateRequest {
            resource: Some(pool("huge", "10.78.0.0/16")).map(|mut r| {
                r.metadata
                    .as_mut()
                    .expect("meta")
                    .annotations
                    .insert("blob".into(), "x".repeat(5 * 1024 * 1024));
                r
            }),
        })
        .await
        .expect_err("over the message limit");
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{e}"
    );
    assert_eq!(c.etcd_dump().await, before, "nothing stored");
}

/// Two concurrent creates of overlapping pools never both succeed, also through two
/// controller replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_overlapping_pool_creates() {
    let mut c = Cluster::start().await;
    let second = c.add_controller().await;
    let tls = c.client_tls(&Role::Admin);
    let ch2 = tls.connect(&second.to_string()).await.expect("connect 2");
    let api1 = c.admin().await;
    let api2 = proto::resource_service_client::ResourceServiceClient::new(ch2);
    for round in 0..40u32 {
        let cidrs = [
            format!("10.{round}.0.0/16"),
            format!("10.{round}.0.0/17"),
            format!("10.{round}.128.0/17"),
            format!("10.{round}.64.0/18"),
        ];
        let mut tasks = Vec::new();
        for (i, cidr) in cidrs.iter().enumerate() {
            let mut api = if i % 2 == 0 {
                api1.clone()
            } else {
                api2.clone()
            };
            let p = pool(&format!("r{round}-{i}"), cidr);
            tasks.push(tokio::spawn(async move {
                api.create(proto::CreateRequest { resource: Some(p) }).await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.expect("task") {
                Ok(_) => ok += 1,
                Err(e) => assert_eq!(e.code(), Code::InvalidArgument, "{e}"),
            }
        }
        // /17 + /17 do not overlap each other, so up to two may win, never the /16
        // together with anything.
        let l = api1
            .clone()
            .list(proto::ListRequest {
                kind: "ippool".into(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        let nets: Vec<ipnet::IpNet> = l
            .items
            .iter()
            .map(|p| {
                let s = tern::model::protojson::struct_to_json_map(p.spec.as_ref().expect("spec"));
                s["cidr"].as_str().expect("cidr").parse().expect("net")
            })
            .collect();
        for (i, a) in nets.iter().enumerate() {
            for b in &nets[i + 1..] {
                assert!(
                    !a.contains(&b.network()) && !b.contains(&a.network()),
                    "round {round}: {a} and {b} overlap"
                );
            }
        }
        assert!(ok >= 1, "round {round}: one create must win");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_controller_restart() {
    let mut c = Cluster::start().await;
    let mut api = c.admin().await;
    api.create(proto::CreateRequest {
        resource: Some(pool("keep", "10.3.0.0/16")),
    })
    .await
    .expect("create");
    let old = c.controllers.remove(0);
    old.shutdown().await;
    c.add_controller().await;
    let mut api = c.admin().await;
    let p = api
        .get(get("ippool", "keep"))
        .await
        .expect("still there")
        .into_inner();
    assert_eq!(p.metadata.expect("meta").name, "keep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_is_unavailable_and_recovers() {
    let mut c = Cluster::start().await;
    let mut api = c.admin().await;
    api.create(proto::CreateRequest {
        resource: Some(pool("a", "10.4.0.0/16")),
    })
    .await
    .expect("create");
    c.etcd.stop();
    let e = api.get(get("ippool", "a")).await.expect_err("etcd is down");
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    let e = api
        .create(proto::CreateRequest {
            resource: Some(pool("b", "10.5.0.0/16")),
        })
        .await
        .expect_err("etcd is down");
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    c.etcd.restart().expect("etcd restarts");
    let mut ok = false;
    for _ in 0..50 {
        if api.get(get("ippool", "a")).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(ok, "the API recovers once etcd is back");
    api.create(proto::CreateRequest {
        resource: Some(pool("b", "10.5.0.0/16")),
    })
    .await
    .expect("writes work again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_changes_from_a_revision() {
    let c = Cluster::start().await;
    let mut api = c.admin().await;
    let l = api
        .list(proto::ListRequest {
            kind: "ippool".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let mut stream = api
        .watch(proto::WatchRequest {
            kind: "ippool".into(),
            start_revision: l.revision + 1,
        })
        .await
        .expect("watch")
        .into_inner();
    api.create(proto::CreateRequest {
        resource: Some(pool("w", "10.6.0.0/16")),
    })
    .await
    .expect("create");
    api.patch(proto::PatchRequest {
        kind: "ippool".into(),
        name: "w".into(),
        r#type: 0,
        patch: r#"{"spec":{"natOutgoing":true}}"#.into(),
        resource_version: String::new(),
    })
    .await
    .expect("patch");
    api.delete(proto::DeleteRequest {
        kind: "ippool".into(),
        name: "w".into(),
        resource_version: String::new(),
    })
    .await
    .expect("delete");
    let mut types = Vec::new();
    for _ in 0..3 {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
            .await
            .expect("event in time")
            .expect("stream ok")
            .expect("event");
        assert_eq!(
            ev.resource.expect("resource").metadata.expect("meta").name,
            "w"
        );
        types.push(ev.r#type);
    }
    assert_eq!(
        types,
        [
            proto::EventType::Added as i32,
            proto::EventType::Modified as i32,
            proto::EventType::Deleted as i32
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_serve_grpc_tools() {
    let c = Cluster::start().await;
    let ch = c.channel(&Role::Viewer).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tern.v1.ResourceService".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let msg = resp.message().await.expect("ok").expect("a response");
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for s in [
        "tern.v1.ResourceService",
        "tern.v1.SyncService",
        "tern.v1.NodeService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == s), "{s} in {names:?}");
    }
}
