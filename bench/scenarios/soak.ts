import { readdirSync } from 'node:fs';
import { expectOk } from '../lib/http-check.js';
import { freePort, sampleUsage, sleep, stopProcess, type ManagedProcess } from '../lib/processes.js';
import { sidecarBuilt, sidecarWarnings, startInboundSidecar, startOutboundSidecar } from '../lib/sidecar.js';
import { runWrk, type WrkResult } from '../lib/wrk.js';
import { formatNumber, type Scenario, type ScenarioReport } from './scenario.js';

/** Load rounds: each this long, so RSS and fds are sampled between them. */
const roundSeconds = 10;
/** After the load, pooled keep-alive connections get this long to be released before the last sample. */
const settleMs = 6000;

interface Sample {
  label: string;
  rssMiB: Record<string, number>;
  fds: Record<string, number>;
}

function openFds(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return Number.NaN;
  }
}

function sample(label: string, proxies: ManagedProcess[]): Sample {
  return {
    label,
    rssMiB: Object.fromEntries(proxies.map((proxy) => [proxy.name, sampleUsage([proxy.pid]).rssMiB])),
    fds: Object.fromEntries(proxies.map((proxy) => [proxy.name, openFds(proxy.pid)])),
  };
}

function soakSeconds(): number {
  const value = process.env.SOAK_DURATION ?? '60s';
  const match = /^(\d+)(s|m)?$/.exec(value);
  if (!match || Number(match[1]) === 0) throw new Error(`SOAK_DURATION=${value}: expected a duration like 60s, 5m or 3600`);
  return Number(match[1]) * (match[2] === 'm' ? 60 : 1);
}

export const soak: Scenario = {
  name: 'soak',
  summary: 'sustained load through the sidecar pair (SOAK_DURATION, default 60s); RSS and open fds before, during and after',
  async run(context): Promise<ScenarioReport> {
    if (!sidecarBuilt()) throw new Error('soak needs dist/cli.js (run `npm run build`)');
    const seconds = soakSeconds();
    const { settings, tools } = context;
    const [outboundPort, inboundPort] = [await freePort(), await freePort()];
    const inbound = await startInboundSidecar(inboundPort, context.appPort, context.pki.b);
    const outbound = await startOutboundSidecar(outboundPort, inboundPort, context.pki.a);
    const proxies = [outbound, inbound];
    const url = `http://127.0.0.1:${outboundPort}/`;
    const samples: Sample[] = [];
    const rounds: WrkResult[] = [];
    try {
      await expectOk(url, 'sidecar pair');
      samples.push(sample('before load', proxies));
      process.stderr.write(`  soak: ${seconds}s of load in ${roundSeconds}s rounds, ${settings.connections} connections\n`);
      for (let elapsed = 0; elapsed < seconds; elapsed += roundSeconds) {
        const duration = Math.min(roundSeconds, seconds - elapsed);
        rounds.push(await runWrk({ wrk: tools.wrk, url, threads: settings.threads, connections: settings.connections, duration: `${duration}s` }));
        samples.push(sample(`after ${elapsed + duration}s`, proxies));
        for (const proxy of proxies) if (proxy.hasExited()) throw new Error(`${proxy.name} exited during the soak`);
      }
      await sleep(settleMs);
      samples.push(sample(`idle ${settleMs / 1000}s later`, proxies));
    } finally {
      for (const proxy of proxies) await stopProcess(proxy);
    }
    const problems = proxies.flatMap((proxy) => sidecarWarnings(proxy).map((line) => `${proxy.name}: ${line}`));
    const requests = rounds.reduce((sum, round) => sum + round.requests, 0);
    const errors = rounds.reduce((sum, round) => sum + round.non2xx + Object.values(round.socketErrors).reduce((a, b) => a + b, 0), 0);
    const names = proxies.map((proxy) => proxy.name);
    const first = samples[0]!;
    const last = samples[samples.length - 1]!;
    return {
      title: `soak: ${seconds}s through the sidecar pair (wrk ${settings.connections} connections)`,
      tables: [
        {
          header: ['sample', ...names.flatMap((name) => [`${name} RSS MiB`, `${name} fds`])],
          rows: samples.map((entry) => [entry.label, ...names.flatMap((name) => [formatNumber(entry.rssMiB[name], 1), String(entry.fds[name])])]),
        },
      ],
      notes: [
        `${requests} requests, ${errors} errors, ${formatNumber(requests / seconds, 0)} req/s on average`,
        ...names.map((name) => `${name}: RSS ${formatNumber(first.rssMiB[name], 1)} -> ${formatNumber(last.rssMiB[name], 1)} MiB, fds ${first.fds[name]} -> ${last.fds[name]}`),
        ...(problems.length ? problems.slice(0, 10).map((line) => `logged: ${line}`) : ['no warnings logged by either sidecar']),
      ],
      data: { seconds, requests, errors, samples, problems },
      chart: [],
    };
  },
};
