// The deploy manifests (deploy/kubernetes, deploy/compose) against the CLI they configure: every
// flag and SIDECAR_* variable is one `run` defines (src/config.ts, the CLI's own table), ports and
// probe paths agree with the listeners those flags give, the secret holds a recognised layout, and
// the sidecar, started with exactly the manifest's arguments and environment, becomes ready.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { after, describe, test } from 'node:test';
import { parseAllDocuments } from 'yaml';
import { layouts } from '../src/certs/load.js';
import { type Config } from '../src/config.js';
import { startEchoApp } from './helpers/apps.js';
import { mtlsRequest, plainRequest } from './helpers/clients.js';
import { configOf, localInvocation, parseInvocation, type SidecarInvocation } from './helpers/deploy.js';
import { freshDir, issueLeaf, kubernetesAtomicWrite, sharedRootCA } from './helpers/pki.js';
import { REPO_ROOT, runCli, startSidecar, stopAllSidecars } from './helpers/sidecar.js';

after(stopAllSidecars);

// ---- reading manifests ----

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any -- manifests are untyped YAML

const KUBERNETES_DIR = join(REPO_ROOT, 'deploy/kubernetes');
const COMPOSE_FILE = join(REPO_ROOT, 'deploy/compose/compose.yaml');
const SIDECAR_CONTAINER = 'mtls-sidecar';
const kubernetesLayout = layouts.find((layout) => layout.name === 'kubernetes')!;

function yamlFilesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .filter((name) => /\.ya?ml$/.test(name))
    .map((name) => join(dir, name))
    .sort();
}

/** Every document of a YAML file; the parse fails the test with the file and the parser's message. */
function readYaml(path: string, options: { version?: '1.1' | '1.2'; merge?: boolean } = {}): Json[] {
  // Kubernetes reads YAML 1.1 (so `defaultMode: 0440` is octal); compose uses merge keys.
  const documents = parseAllDocuments(readFileSync(path, 'utf8'), { version: options.version ?? '1.1', merge: options.merge ?? false });
  const list = Array.isArray(documents) ? documents : [];
  assert.ok(Array.isArray(documents), `${path} is empty`);
  for (const document of list) {
    assert.deepEqual(document.errors.map((error) => error.message), [], `${relative(REPO_ROOT, path)} parses`);
  }
  return list.map((document) => document.toJS() as Json).filter((value) => value !== null);
}

/** `kubectl kustomize DIR` output, or undefined when kubectl is not installed. */
function kustomize(dir: string): Json[] | undefined {
  let text: string;
  try {
    text = execFileSync('kubectl', ['kustomize', dir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new Error(`kubectl kustomize ${relative(REPO_ROOT, dir)} failed: ${(error as { stderr?: string }).stderr ?? error}`);
  }
  return parseAllDocuments(text, { version: '1.1' }).map((document) => document.toJS() as Json);
}
const kubectlMissing = kustomize(join(KUBERNETES_DIR, 'mesh-ca')) === undefined ? 'skipped: kubectl (kustomize) is not installed' : false;

function podSpecsOf(documents: Json[]): Json[] {
  return documents.filter((document) => document?.spec?.template?.spec).map((document) => document.spec.template.spec);
}

function containersOf(podSpec: Json): Json[] {
  return [...(podSpec.initContainers ?? []), ...(podSpec.containers ?? [])];
}

/** A container's env list as a plain object (literal values only: the manifests use no valueFrom). */
function envOf(container: Json): Record<string, string> {
  const env: Record<string, string> = {};
  for (const variable of container.env ?? []) {
    assert.ok(variable.value !== undefined, `env ${variable.name} of ${container.name} has a literal value`);
    env[variable.name] = String(variable.value);
  }
  return env;
}

function invocationOf(container: Json): SidecarInvocation {
  return { args: [...(container.command ?? []), ...(container.args ?? [])].map(String), env: envOf(container) };
}

/** Unknown flags/env are reported; the values are validated by the CLI's own buildConfig. */
function assertAcceptedByCli(invocation: SidecarInvocation, where: string): Config {
  const parsed = parseInvocation(invocation);
  assert.equal(parsed.command ?? 'run', 'run', `${where}: the sidecar runs the run command`);
  assert.deepEqual(parsed.unknownFlags, [], `${where}: every flag is one \`run\` defines`);
  assert.deepEqual(parsed.unknownEnv, [], `${where}: every SIDECAR_* variable names a flag`);
  return configOf(invocation);
}

const isLoopback = (host: string) => host === '127.0.0.1' || host === '::1' || host === 'localhost';
const isWildcard = (host: string) => host === '0.0.0.0' || host === '::';

function labelsMatch(selector: Record<string, string>, labels: Record<string, string>): boolean {
  return Object.entries(selector).every(([key, value]) => labels[key] === value);
}

// ---- one workload as Kubernetes objects: Deployment, Service, NetworkPolicy, Certificate ----

interface Workload {
  deployment: Json;
  podSpec: Json;
  sidecar: Json;
  config: Config;
  service: Json;
  networkPolicy: Json;
  certificate: Json;
  namespace: string;
}

function workloadOf(documents: Json[], namespace: string): Workload {
  const one = (kind: string) => {
    const found = documents.filter((document) => document.kind === kind);
    assert.equal(found.length, 1, `exactly one ${kind}`);
    return found[0]!;
  };
  const deployment = one('Deployment');
  const podSpec = deployment.spec.template.spec;
  const sidecar = (podSpec.initContainers ?? []).find((container: Json) => container.name === SIDECAR_CONTAINER);
  assert.ok(sidecar, `the ${SIDECAR_CONTAINER} container is an init container (native sidecar)`);
  const config = assertAcceptedByCli(invocationOf(sidecar), `Deployment ${deployment.metadata.name}`);
  return { deployment, podSpec, sidecar, config, service: one('Service'), networkPolicy: one('NetworkPolicy'), certificate: one('Certificate'), namespace };
}

function checkWorkload(workload: Workload, issuers: Json[]): void {
  const { deployment, podSpec, sidecar, config, service, networkPolicy, certificate, namespace } = workload;
  const name = deployment.metadata.name as string;
  const podLabels = deployment.spec.template.metadata.labels as Record<string, string>;
  assert.ok(labelsMatch(deployment.spec.selector.matchLabels, podLabels), `${name}: the selector matches the pod`);

  // Native sidecar: started first, ready before the app, stopped last.
  assert.equal(sidecar.restartPolicy, 'Always', `${name}: restartPolicy Always makes the init container a native sidecar`);
  assert.ok(config.inbound && config.admin && config.outbound, `${name}: inbound, outbound and admin listeners are on`);
  const { inbound, admin, outbound } = config as Config & { inbound: NonNullable<Config['inbound']>; admin: NonNullable<Config['admin']>; outbound: NonNullable<Config['outbound']> };
  assert.ok(isWildcard(admin.host), `${name}: the admin listener (${admin.host}) is reachable by the kubelet, not loopback-only`);
  for (const [probe, path] of [['startupProbe', '/readyz'], ['readinessProbe', '/readyz'], ['livenessProbe', '/healthz']] as const) {
    assert.equal(sidecar[probe]?.httpGet?.path, path, `${name}: ${probe} path`);
    assert.equal(sidecar[probe]?.httpGet?.port, admin.port, `${name}: ${probe} port is the admin port`);
  }
  const containerPorts = (sidecar.ports ?? []).map((port: Json) => port.containerPort);
  assert.deepEqual(containerPorts.sort(), [inbound.port, admin.port].sort(), `${name}: declared ports are the inbound and admin listeners`);
  assert.ok(deployment.spec.template.spec.terminationGracePeriodSeconds * 1000 > config.timeouts.drainMs, `${name}: the grace period outlasts --drain-timeout`);

  // The cert dir: the workload's secret, read-only, in the Kubernetes layout.
  const mount = (sidecar.volumeMounts ?? []).find((volumeMount: Json) => volumeMount.mountPath === config.certs.dir);
  assert.ok(mount, `${name}: a volume is mounted at the cert dir ${config.certs.dir}`);
  assert.equal(mount.readOnly, true, `${name}: the cert dir is mounted read-only`);
  const volume = (podSpec.volumes ?? []).find((candidate: Json) => candidate.name === mount.name);
  assert.equal(volume?.secret?.secretName, certificate.spec.secretName, `${name}: the cert dir is the Certificate's secret`);
  assert.equal(volume.secret.defaultMode, 0o440, `${name}: the key is not world-readable`);
  assert.deepEqual(
    volume.secret.items.map((item: Json) => [item.key, item.path]),
    [kubernetesLayout.cert, kubernetesLayout.key, kubernetesLayout.ca].map((file) => [file, file]),
    `${name}: the secret's keys are the sidecar's Kubernetes layout (tls.crt, tls.key, ca.crt)`,
  );
  assert.equal(config.certs.certFile ?? config.certs.keyFile ?? config.certs.caFile, undefined, `${name}: no file-name overrides: the layout is detected`);

  // Apps: outbound calls through the sidecar's forward proxy on loopback.
  assert.ok(isLoopback(outbound.host), `${name}: the forward proxy listens on loopback only`);
  const apps = podSpec.containers as Json[];
  assert.ok(apps.length > 0);
  for (const app of apps) {
    const env = envOf(app);
    for (const variable of ['HTTP_PROXY', 'http_proxy']) {
      const proxy = new URL(env[variable] ?? 'missing:');
      assert.ok(isLoopback(proxy.hostname) && Number(proxy.port) === outbound.port, `${name}/${app.name}: ${variable} (${env[variable]}) is the outbound listener ${outbound.host}:${outbound.port}`);
    }
    for (const variable of ['NO_PROXY', 'no_proxy']) {
      assert.ok(['localhost', '127.0.0.1'].every((host) => env[variable]?.split(',').includes(host)), `${name}/${app.name}: ${variable} covers localhost`);
    }
  }

  // Hardening, pod and containers.
  const pod = podSpec.securityContext;
  assert.equal(pod.runAsNonRoot, true);
  assert.ok(pod.runAsUser > 0, `${name}: runAsUser is not root`);
  assert.equal(pod.seccompProfile?.type, 'RuntimeDefault');
  assert.equal(podSpec.automountServiceAccountToken, false, `${name}: no API token in a pod that does not use the API`);
  for (const container of containersOf(podSpec)) {
    const security = container.securityContext ?? {};
    assert.equal(security.readOnlyRootFilesystem, true, `${name}/${container.name}: read-only root`);
    assert.equal(security.allowPrivilegeEscalation, false, `${name}/${container.name}: no privilege escalation`);
    assert.deepEqual(security.capabilities?.drop, ['ALL'], `${name}/${container.name}: every capability dropped`);
    assert.ok(container.resources?.requests?.cpu && container.resources?.requests?.memory && container.resources?.limits?.memory, `${name}/${container.name}: requests and a memory limit`);
  }
  assert.deepEqual(sidecar.resources, { requests: { cpu: '50m', memory: '96Mi' }, limits: { memory: '256Mi' } }, `${name}: the measured sizing`);

  // Service and NetworkPolicy: the mTLS port only.
  assert.ok(labelsMatch(service.spec.selector, podLabels), `${name}: the Service selects the pod`);
  assert.deepEqual(service.spec.ports.map((port: Json) => [port.port, port.targetPort]), [[inbound.port, inbound.port]], `${name}: the Service exposes the inbound listener only`);
  assert.ok(labelsMatch(networkPolicy.spec.podSelector.matchLabels, podLabels), `${name}: the NetworkPolicy selects the pod`);
  assert.deepEqual(networkPolicy.spec.policyTypes, ['Ingress']);
  const allowedPorts = (networkPolicy.spec.ingress as Json[]).flatMap((rule) => (rule.ports ?? [{ port: 'every port' }]).map((port: Json) => port.port));
  assert.deepEqual(allowedPorts, [inbound.port], `${name}: only the mTLS port (${inbound.port}) is admitted; admin ${admin.port} from nowhere`);

  // Certificate: the workload's SPIFFE ID and DNS names, short-lived, rotated with a new key.
  const spec = certificate.spec;
  const serviceAccount = podSpec.serviceAccountName as string;
  assert.deepEqual(spec.uris, [`spiffe://cluster.local/ns/${namespace}/sa/${serviceAccount}`], `${name}: the URI SAN is the service account's SPIFFE ID`);
  assert.equal(config.trustDomain, 'cluster.local', `${name}: --trust-domain is the SPIFFE IDs' trust domain`);
  const serviceName = service.metadata.name as string;
  for (const dns of [serviceName, `${serviceName}.${namespace}.svc`, `${serviceName}.${namespace}.svc.cluster.local`]) {
    assert.ok(spec.dnsNames.includes(dns), `${name}: DNS SAN ${dns}`);
  }
  assert.equal(spec.duration, '24h');
  assert.equal(spec.renewBefore, '8h');
  assert.equal(spec.privateKey.algorithm, 'ECDSA');
  assert.equal(spec.privateKey.rotationPolicy, 'Always');
  assert.ok(spec.usages.includes('server auth') && spec.usages.includes('client auth'), `${name}: the certificate serves both directions`);
  const issuer = issuers.find((candidate) => candidate.kind === spec.issuerRef.kind && candidate.metadata.name === spec.issuerRef.name);
  assert.ok(issuer, `${name}: issuerRef ${spec.issuerRef.kind}/${spec.issuerRef.name} exists in deploy/kubernetes/mesh-ca`);
  assert.ok(issuer.spec.ca?.secretName, `${name}: a CA issuer, which writes ca.crt (the trust bundle) into the secret`);
}

const meshCaDocuments = () => readYaml(join(KUBERNETES_DIR, 'mesh-ca/issuers.yaml'));
const kustomization = (dir: string) => readYaml(join(KUBERNETES_DIR, dir, 'kustomization.yaml'))[0]!;

/** The base as written (no kustomize needed): its resources, in the kustomization's namespace. */
function baseWorkload(): Workload {
  const base = kustomization('base');
  const documents = (base.resources as string[]).flatMap((file) => readYaml(join(KUBERNETES_DIR, 'base', file)));
  return workloadOf(documents, base.namespace);
}

describe('Kubernetes manifests (deploy/kubernetes)', () => {
  test('every manifest parses as YAML', () => {
    const files = yamlFilesUnder(KUBERNETES_DIR);
    assert.ok(files.length >= 10, `found ${files.length} manifests`);
    for (const file of files) assert.ok(readYaml(file).length > 0, `${relative(REPO_ROOT, file)} holds a document`);
  });

  test('every kustomization references files and directories that exist', () => {
    for (const file of yamlFilesUnder(KUBERNETES_DIR).filter((path) => path.endsWith('kustomization.yaml'))) {
      const dir = dirname(file);
      const document = readYaml(file)[0]!;
      const references = [...(document.resources ?? []), ...(document.patches ?? []).filter((patch: Json) => patch.path).map((patch: Json) => patch.path)];
      assert.ok(references.length > 0, `${relative(REPO_ROOT, file)} references something`);
      for (const reference of references as string[]) {
        const target = join(dir, reference);
        assert.ok(existsSync(target), `${relative(REPO_ROOT, file)}: ${reference} exists`);
        if (statSync(target).isDirectory()) assert.ok(existsSync(join(target, 'kustomization.yaml')), `${reference} is a kustomization`);
      }
    }
  });

  test('every sidecar container, in every manifest and patch, uses only flags and SIDECAR_* variables the CLI defines', () => {
    let checked = 0;
    for (const file of yamlFilesUnder(KUBERNETES_DIR)) {
      for (const podSpec of podSpecsOf(readYaml(file))) {
        for (const container of containersOf(podSpec).filter((candidate) => candidate.name === SIDECAR_CONTAINER)) {
          assertAcceptedByCli(invocationOf(container), relative(REPO_ROOT, file));
          checked += 1;
        }
      }
    }
    assert.ok(checked >= 2, `checked ${checked} sidecar containers (base and overlay)`);
  });

  test('base: native sidecar, probes on the admin port, proxy env, read-only secret in the Kubernetes layout, hardening, Service and NetworkPolicy on 8443 only, cert-manager Certificate', () => {
    checkWorkload(baseWorkload(), meshCaDocuments());
  });

  test('the mesh CA: a self-signed root signs an ECDSA CA certificate that a CA Issuer uses', () => {
    const documents = meshCaDocuments();
    const caCertificate = documents.find((document) => document.kind === 'Certificate')!;
    assert.equal(caCertificate.spec.isCA, true);
    assert.equal(caCertificate.spec.privateKey.algorithm, 'ECDSA');
    const caIssuer = documents.find((document) => document.kind === 'Issuer' && document.spec.ca)!;
    assert.equal(caIssuer.spec.ca.secretName, caCertificate.spec.secretName);
    const root = documents.find((document) => document.kind === 'Issuer' && document.metadata.name === caCertificate.spec.issuerRef.name);
    assert.ok(root?.spec.selfSigned !== undefined);
  });

  test('kustomize renders base and the caller overlay into two workloads; caller expects greeter\'s SPIFFE ID at a name greeter\'s certificate holds', { skip: kubectlMissing }, () => {
    const issuers = meshCaDocuments();
    const greeter = workloadOf(kustomize(join(KUBERNETES_DIR, 'base'))!, kustomization('base').namespace);
    const caller = workloadOf(kustomize(join(KUBERNETES_DIR, 'overlays/caller'))!, kustomization('overlays/caller').namespace);
    checkWorkload(greeter, issuers);
    checkWorkload(caller, issuers);
    assert.equal(greeter.deployment.metadata.name, 'greeter');
    assert.equal(caller.deployment.metadata.name, 'caller');
    assert.notEqual(caller.certificate.spec.secretName, greeter.certificate.spec.secretName, 'each workload has its own secret');
    const expectations = [...caller.config.expectSpiffe];
    assert.equal(expectations.length, 1);
    const [host, spiffeId] = expectations[0]!;
    assert.ok(greeter.certificate.spec.dnsNames.includes(host), `greeter's certificate holds the name ${host}`);
    assert.deepEqual(greeter.certificate.spec.uris, [spiffeId], "the SPIFFE ID caller expects is greeter's");
    const appScript = JSON.stringify(caller.podSpec.containers);
    assert.ok(appScript.includes(`http://${host}:${greeter.service.spec.ports[0].port}/`), "caller's app calls greeter's Service by that name, in plain http:// through the proxy");
    // greeter's allow-list admits caller's identity.
    const allowed = greeter.config.allow.spiffe.map((pattern) => new RegExp(`^${pattern.replace(/[.]/g, '\\.').replace(/\*/g, '[^/]+')}$`));
    assert.ok(allowed.some((pattern) => pattern.test(caller.certificate.spec.uris[0])), "greeter's --allow-spiffe admits caller");
  });

  test('the sidecar, run with exactly the base Deployment\'s arguments and environment, becomes ready; probes answer; the allow-list admits the namespace\'s workloads only', async () => {
    const workload = baseWorkload();
    const { sidecar, certificate, config } = workload;
    const root = await sharedRootCA();
    // The certificate cert-manager would issue from this Certificate (ECDSA P-256, its SANs), minted by openssl.
    const leaf = await issueLeaf(root, { cn: certificate.spec.commonName, dns: certificate.spec.dnsNames, uris: certificate.spec.uris, keyType: 'ec' });
    const certDir = await freshDir('k8s-secret-volume');
    await kubernetesAtomicWrite(certDir, { [kubernetesLayout.cert]: leaf.chainPem, [kubernetesLayout.key]: leaf.keyPem, [kubernetesLayout.ca]: root.rootPem });
    const app = await startEchoApp();
    try {
      const local = localInvocation(invocationOf(sidecar), { certDir, app: app.url });
      const [command, ...args] = local.args;
      assert.equal(command, 'run');
      const running = await startSidecar(args, { env: local.env });
      assert.deepEqual(running.logs().filter((line) => /ignoring environment variable/.test(String(line.msg))), [], 'no manifest variable is ignored');
      for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
        const response = await plainRequest({ ...running.admin, path: sidecar[probe].httpGet.path });
        assert.equal(response.status, 200, `${probe} ${sidecar[probe].httpGet.path}`);
      }
      const callerId = `spiffe://cluster.local/ns/${workload.namespace}/sa/caller`;
      const outsiderId = 'spiffe://cluster.local/ns/elsewhere/sa/intruder';
      const servername = `${workload.service.metadata.name}.${workload.namespace}.svc.cluster.local`;
      for (const [peerId, expected] of [[callerId, 200], [outsiderId, 403]] as const) {
        const peer = await issueLeaf(root, { cn: 'peer', uris: [peerId], keyType: 'ec' });
        const response = await mtlsRequest({ ...running.inbound, path: '/from-a-peer', cert: peer.chainPem, key: peer.keyPem, ca: root.rootPem, servername });
        assert.equal(response.status, expected, `${peerId}: ${response.text}`);
      }
      assert.equal(config.allow.spiffe.length, 1);
      assert.equal(await running.stop(), 0);
    } finally {
      await app.close();
    }
  });
});

// ---- compose ----

interface ComposeService {
  name: string;
  spec: Json;
}

const compose = () => readYaml(COMPOSE_FILE, { version: '1.2', merge: true })[0]!;
const composeServices = (): ComposeService[] => Object.entries(compose().services as Json).map(([name, spec]) => ({ name, spec }));
const usesSidecarImage = (service: ComposeService) => String(service.spec.image).startsWith('mtls-sidecar:');

function composeInvocation(service: ComposeService): SidecarInvocation {
  return { args: (service.spec.command as unknown[]).map(String), env: Object.fromEntries(Object.entries(service.spec.environment ?? {}).map(([key, value]) => [key, String(value)])) };
}

/** `volume:/path[:ro]` entries of a service: container path -> volume name and mode. */
function mountsOf(service: ComposeService): Map<string, { volume: string; readOnly: boolean }> {
  return new Map(
    ((service.spec.volumes ?? []) as string[]).map((entry) => {
      const [volume, path, mode] = entry.split(':');
      return [path!, { volume: volume!, readOnly: mode === 'ro' }];
    }),
  );
}

describe('compose (deploy/compose/compose.yaml)', () => {
  const sidecars = () => composeServices().filter((service) => usesSidecarImage(service) && service.spec.command[0] === 'run');
  const certSteps = () => composeServices().filter((service) => usesSidecarImage(service) && service.spec.command[0] === 'certs');

  test('parses; two sidecars, each with an app in its network namespace that starts once the sidecar is healthy', () => {
    const services = composeServices();
    assert.equal(sidecars().length, 2);
    for (const sidecar of sidecars()) {
      const config = assertAcceptedByCli(composeInvocation(sidecar), `service ${sidecar.name}`);
      assert.equal(sidecar.spec.read_only, true, `${sidecar.name}: read-only root`);
      assert.deepEqual(sidecar.spec.cap_drop, ['ALL']);
      const mount = mountsOf(sidecar).get(config.certs.dir);
      assert.ok(mount?.readOnly, `${sidecar.name}: the cert dir ${config.certs.dir} is a read-only volume`);
      // The health check is the CLI's `wait` against this sidecar's admin listener.
      const [kind, node, script, command, ...waitArgs] = sidecar.spec.healthcheck.test as string[];
      assert.deepEqual([kind, node, script, command], ['CMD', '/nodejs/bin/node', '/app/dist/cli.js', 'wait']);
      assert.equal(waitArgs[waitArgs.indexOf('--admin') + 1], `${config.admin!.host}:${config.admin!.port}`, `${sidecar.name}: the health check asks this sidecar's admin listener`);
      // Its app shares its network namespace, waits for it, and uses its forward proxy.
      const apps = services.filter((service) => service.spec.network_mode === `service:${sidecar.name}`);
      assert.equal(apps.length, 1, `${sidecar.name} has one app beside it`);
      assert.equal(apps[0]!.spec.depends_on?.[sidecar.name]?.condition, 'service_healthy', `${apps[0]!.name} starts once ${sidecar.name} is ready`);
      for (const variable of ['HTTP_PROXY', 'http_proxy']) {
        const value = apps[0]!.spec.environment?.[variable];
        if (value === undefined) continue;
        const proxy = new URL(value);
        assert.ok(isLoopback(proxy.hostname) && Number(proxy.port) === config.outbound!.port, `${apps[0]!.name}: ${variable} is ${sidecar.name}'s outbound listener`);
      }
      // Its certificates come from a one-shot step writing the volume it mounts.
      const step = certSteps().find((candidate) => [...mountsOf(candidate)].some(([path, { volume }]) => volume === mount.volume && candidate.spec.command.includes(path)));
      assert.ok(step, `${sidecar.name}: a certs step writes volume ${mount.volume}`);
      assert.equal(sidecar.spec.depends_on?.[step.name]?.condition, 'service_completed_successfully');
    }
  });

  test("caller's --expect-spiffe names greeter's network alias and the SPIFFE ID greeter's certs step issues", () => {
    const services = composeServices();
    const caller = sidecars().find((service) => configOf(composeInvocation(service)).expectSpiffe.size > 0)!;
    const [host, spiffeId] = [...configOf(composeInvocation(caller)).expectSpiffe][0]!;
    const target = sidecars().find((service) => service.spec.networks?.mesh?.aliases?.includes(host))!;
    assert.ok(target, `a sidecar answers to ${host}`);
    const targetMount = mountsOf(target).get(configOf(composeInvocation(target)).certs.dir)!;
    const step = certSteps().find((candidate) => [...mountsOf(candidate).values()].some(({ volume, readOnly }) => volume === targetMount.volume && !readOnly))!;
    const issue = step.spec.command as string[];
    assert.equal(issue[issue.indexOf('--spiffe') + 1], spiffeId);
    assert.ok(issue[issue.indexOf('--dns') + 1]!.split(',').includes(host));
    const app = services.find((service) => service.spec.network_mode === `service:${caller.name}`)!;
    assert.ok(JSON.stringify(app.spec.command).includes(`http://${host}:${configOf(composeInvocation(target)).inbound!.port}/`), "the caller app calls greeter's inbound port by that name");
  });

  test('the certs steps, sidecars and health checks run with exactly the compose arguments (volumes as local folders)', async () => {
    // Each named volume becomes a folder; a container path in an argument becomes that folder.
    const volumes = new Map<string, string>();
    const hostPath = async (service: ComposeService, containerPath: string): Promise<string | undefined> => {
      const mount = mountsOf(service).get(containerPath);
      if (!mount) return undefined;
      if (!volumes.has(mount.volume)) volumes.set(mount.volume, await freshDir(`compose-volume-${mount.volume}`));
      return volumes.get(mount.volume)!;
    };
    const steps = certSteps().sort((a, b) => Number(b.spec.command[1] === 'init') - Number(a.spec.command[1] === 'init'));
    assert.equal(steps[0]!.spec.command[1], 'init', 'the CA step runs first');
    for (const step of steps) {
      const args = await Promise.all((step.spec.command as string[]).map(async (arg) => (await hostPath(step, arg)) ?? arg));
      const result = await runCli(args);
      assert.equal(result.code, 0, `${step.name}: ${args.join(' ')}\n${result.stderr}`);
    }
    for (const sidecar of sidecars()) {
      const invocation = composeInvocation(sidecar);
      const certDir = await hostPath(sidecar, configOf(invocation).certs.dir);
      assert.ok(certDir);
      const local = localInvocation(invocation, { certDir, app: 'http://127.0.0.1:9' });
      const running = await startSidecar(local.args.slice(1), { env: local.env });
      const waitArgs = (sidecar.spec.healthcheck.test as string[]).slice(3);
      waitArgs[waitArgs.indexOf('--admin') + 1] = `${running.admin.host}:${running.admin.port}`;
      const health = await runCli(waitArgs);
      assert.equal(health.code, 0, `${sidecar.name} health check: ${health.stderr}`);
      assert.equal(await running.stop(), 0);
    }
  });
});
