"""deploy/kubernetes: manifests valid against the Kubernetes schemas (offline,
``kubernetes-validate``), consistent with each other and with memd, and the
DNS discovery they rely on, with a stub resolver in place of cluster DNS."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from memd.cluster import discovery
from memd.cluster.client import ClusterClient
from memd.cluster.config import ClusterConfig
from memd.cluster.discovery import parse_config_reply

yaml = pytest.importorskip("yaml", reason="PyYAML not installed (pip install pyyaml)")

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"   # oldest release still supported upstream when this was written
NAMESPACE = "cache"


def kustomize(directory: Path) -> list[dict]:
    """The objects ``kubectl apply -k directory`` creates, for what these
    kustomizations use: resource files, resource directories (other
    kustomizations), and configMapGenerator files (no name hash)."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs = []
    for resource in kust.get("resources", []):
        path = directory / resource
        if path.is_dir():
            docs += kustomize(path)
        else:
            docs += list(yaml.safe_load_all(path.read_text()))
    for gen in kust.get("configMapGenerator", []):
        assert kust["generatorOptions"]["disableNameSuffixHash"] is True
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]},
                     "data": {Path(f).name: (directory / f).read_text() for f in gen["files"]}})
    return docs


def manifests() -> dict[str, dict]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in kustomize(DEPLOY)}


def settings() -> dict:
    """The shared settings file, as the pods read it (through the ConfigMap)."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads TOML itself")
    c = container()
    path = Path(flag(c["args"], "--config"))
    (mount,) = [m for m in c["volumeMounts"] if Path(m["mountPath"]) == path.parent]
    (volume,) = [v for v in statefulset()["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    configmap = manifests()[f"ConfigMap/{volume['configMap']['name']}"]
    return tomllib.loads(configmap["data"][path.name])


def by_kind(kind: str) -> list[dict]:
    return [d for key, d in manifests().items() if key.startswith(kind + "/")]


def statefulset() -> dict:
    (sts,) = by_kind("StatefulSet")
    return sts


def headless_service() -> dict:
    (svc,) = [s for s in by_kind("Service") if s["spec"].get("clusterIP") == "None"]
    return svc


def container() -> dict:
    (c,) = statefulset()["spec"]["template"]["spec"]["containers"]
    return c


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_every_manifest_validates_against_the_kubernetes_schemas():
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    files = {r for r in kust["resources"] if not (DEPLOY / r).is_dir()}
    assert files == {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    docs = kustomize(DEPLOY)
    for doc in docs:
        kv.validate(doc, K8S_VERSION, strict=True)   # raises on any schema error
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "PodDisruptionBudget", "Service", "Service",
                                               "StatefulSet"]


def test_pods_and_compose_share_one_settings_file_memd_accepts():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads TOML itself")
    from memd.cli import build_parser, config_argv

    shared = DEPLOY.parent / "settings" / "memd.toml"
    assert settings() == tomllib.loads(shared.read_text())   # what the pods mount is this file
    argv = config_argv(str(shared), build_parser())   # unknown keys or bad types raise
    assert "--memory-limit" in argv
    compose = yaml.safe_load((DEPLOY.parent.parent / "docker-compose.yml").read_text())
    for name, svc in compose["services"].items():
        if svc.get("profiles"):
            continue
        path = flag(svc["command"], "--config")
        assert f"./deploy/settings/memd.toml:{path}:ro" in svc["volumes"], name


def test_the_statefulset_discovers_its_pods_through_the_headless_service():
    sts, svc = statefulset(), headless_service()
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["publishNotReadyAddresses"] is True
    (port,) = svc["spec"]["ports"]
    # Nodes and ClusterClient look up _memcache._tcp.<service>: the port's name.
    assert discovery.SRV_PREFIX == f"_{port['name']}._{port['protocol'].lower()}."
    assert flag(container()["args"], "--cluster-dns") == svc["metadata"]["name"]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    for selector in [svc["spec"]["selector"], sts["spec"]["selector"]["matchLabels"],
                     by_kind("PodDisruptionBudget")[0]["spec"]["selector"]["matchLabels"]]:
        assert selector.items() <= pod_labels.items()


def test_the_pods_run_non_root_on_a_read_only_root_with_protocol_probes():
    pod = statefulset()["spec"]["template"]["spec"]
    c = container()
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["exec"]["command"][:3] == ["python", "-m", "tools.probe"]
    # Ready only once the node announces its fleet: the client Service must
    # not hand a bootstrapping client an empty membership.
    assert "--cluster" in c["readinessProbe"]["exec"]["command"]
    # Everything memd writes goes to a volume: the snapshot, and its temp file beside it.
    snapshot = flag(c["args"], "--snapshot")
    assert any(snapshot.startswith(m["mountPath"] + "/") for m in c["volumeMounts"])


def _mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity) / (1 << 20)


def test_memory_resources_leave_room_above_the_item_limit():
    c = container()
    item_mb = settings()["memory-limit"]
    limit, request = (_mib(c["resources"][k]["memory"]) for k in ("limits", "requests"))
    # -m caps item memory; the process and the recent replies (-m/16) come on top.
    assert limit >= item_mb * 1.5
    assert request == limit   # a cache the kernel evicts loses everything


def test_the_metrics_port_is_annotated_for_prometheus():
    template = statefulset()["spec"]["template"]
    c = container()
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == flag(c["args"], "--metrics-port")
    assert int(annotations["prometheus.io/port"]) in {p["containerPort"] for p in c["ports"]}


# --------------------------------------------------------------------------- discovery, stub DNS


def pod_names() -> list[str]:
    sts, svc = statefulset(), headless_service()
    return [f"{sts['metadata']['name']}-{i}.{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
            for i in range(sts["spec"]["replicas"])]


def stub_srv_records():
    """What cluster DNS answers for the headless Service: one SRV per pod, any order."""
    port = headless_service()["spec"]["ports"][0]["port"]
    records = [(name, port) for name in pod_names()]
    random.Random(7).shuffle(records)
    return records


def test_every_pod_announces_the_statefulset_members_by_their_stable_names():
    dns_name = flag(container()["args"], "--cluster-dns")
    replies = set()
    for _pod in range(3):
        records = stub_srv_records()
        cfg = ClusterConfig.from_options(None, None, dns_name,
                                         srv_lookup=lambda name: records if name == dns_name else [],
                                         resolve=lambda host: "")
        cfg.poll()
        replies.add(cfg.reply(b"cluster"))
    (reply,) = replies
    info = parse_config_reply(reply)
    assert [n.name for n in info.nodes] == [f"{n}:11211" for n in pod_names()]
    assert all(n.ip == "" for n in info.nodes)   # clients resolve the pod names


def test_cluster_client_by_dns_name_holds_the_same_node_identities(monkeypatch):
    asked = []
    records = stub_srv_records()
    monkeypatch.setattr(discovery, "lookup_srv", lambda name: asked.append(name) or records)
    service = f"memd.{NAMESPACE}.svc.cluster.local"
    with ClusterClient(dns_name=service, ring="ketama", poll_interval=3600) as cc:
        assert asked == [service]
        assert sorted(cc.servers) == [f"{n}:11211" for n in pod_names()]


def test_srv_lookup_asks_the_memcache_service_label_through_the_search_list(monkeypatch):
    dns_resolver = pytest.importorskip("dns.resolver", reason="pip install dnspython")
    import dns.name

    calls = []

    def fake_resolve(qname, rdtype, search=None, lifetime=None):
        calls.append((qname, rdtype, search))
        return [SimpleNamespace(target=dns.name.from_text(f"{n}."), port=11211) for n in pod_names()[::-1]]

    monkeypatch.setattr(dns_resolver, "resolve", fake_resolve)
    assert discovery.lookup_srv("memd") == [(n, 11211) for n in pod_names()]
    assert discovery.lookup_srv("_memcache._tcp.memd.cache.svc.cluster.local")
    assert calls == [("_memcache._tcp.memd", "SRV", True),
                     ("_memcache._tcp.memd.cache.svc.cluster.local", "SRV", True)]

    def nxdomain(*a, **kw):
        raise dns_resolver.NXDOMAIN()

    monkeypatch.setattr(dns_resolver, "resolve", nxdomain)
    assert discovery.lookup_srv("memd") == []


def test_a_node_that_has_not_found_its_fleet_is_live_but_not_ready():
    import subprocess
    import sys

    import servers

    # .invalid never resolves (RFC 6761): the node announces no members yet.
    node = servers.start_memd("--cluster-dns", "memd.invalid")
    try:
        target = f"127.0.0.1:{node.port}"
        probe = [sys.executable, "-m", "tools.probe"]
        root = DEPLOY.parent.parent
        assert subprocess.run(probe + [target], cwd=root, timeout=10).returncode == 0
        assert subprocess.run(probe + ["--cluster", target], cwd=root, timeout=10).returncode == 1
    finally:
        node.cleanup()


class StubDNS:
    """A UDP name server on 127.0.0.1 answering SRV queries from a table, as
    cluster DNS does for the headless Service; NXDOMAIN for anything else."""

    def __init__(self, records: dict[str, list[tuple[str, int]]]):
        import socket
        import threading

        self.records = records
        self.queries: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        import dns.message
        import dns.rcode
        import dns.rdatatype
        import dns.rrset

        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            question = query.question[0]
            name = question.name.to_text()
            self.queries.append(name)
            response = dns.message.make_response(query)
            found = self.records.get(name) if question.rdtype == dns.rdatatype.SRV else None
            if found:
                response.answer.append(dns.rrset.from_text_list(
                    question.name, 5, "IN", "SRV", [f"0 50 {port} {target}." for target, port in found]))
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(response.to_wire(), peer)

    def close(self):
        self.sock.close()


def test_discovery_over_the_wire_through_a_pods_search_list(monkeypatch):
    """The real dnspython path: a pod's resolv.conf (search <ns>.svc.cluster.local
    ..., ndots:5), a node started with `--cluster-dns memd`, a client given the
    full service name; a stub name server answers the SRV records."""
    resolver_mod = pytest.importorskip("dns.resolver", reason="pip install dnspython")
    import dns.name

    service = f"_memcache._tcp.memd.{NAMESPACE}.svc.cluster.local."
    server = StubDNS({service: stub_srv_records()})
    try:
        resolver = resolver_mod.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = server.port
        resolver.search = [dns.name.from_text(d) for d in
                           (f"{NAMESPACE}.svc.cluster.local", "svc.cluster.local", "cluster.local")]
        resolver.ndots = 5
        monkeypatch.setattr(resolver_mod, "default_resolver", resolver)

        cfg = ClusterConfig.from_options(None, None, flag(container()["args"], "--cluster-dns"),
                                         resolve=lambda host: "")
        cfg.poll()
        expected = [f"{n}:11211" for n in pod_names()]
        assert [n.name for n in parse_config_reply(cfg.reply(b"cluster")).nodes] == expected
        assert discovery.resolve_dns(f"memd.{NAMESPACE}.svc.cluster.local") == expected
        assert service in server.queries
    finally:
        server.close()
