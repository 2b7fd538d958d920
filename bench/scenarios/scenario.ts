import type { BenchPki, KeyType } from '../lib/pki.js';
import type { BenchTools } from '../lib/tools.js';

export interface BenchSettings {
  /** wrk syntax, e.g. "10s", "1m". */
  duration: string;
  durationSeconds: number;
  warmup: string;
  connections: number;
  threads: number;
  /** wrk connections in "large-body" (each has 1 MiB in flight). */
  largeBodyConnections: number;
  keyType: KeyType;
}

/** What every scenario gets: tools, settings, one PKI and one app shared by all setups. */
export interface BenchContext {
  tools: BenchTools;
  settings: BenchSettings;
  /** The PKI of BENCH_KEY, shared by every setup. */
  pki: BenchPki;
  /** A PKI of the given key type (the same as `pki` for BENCH_KEY), minted once on first use. */
  pkiFor(keyType: KeyType): Promise<BenchPki>;
  /** A fresh directory per scenario run lives under here. */
  workDir: string;
  appPort: number;
  appDescription: string;
}

export interface Table {
  header: string[];
  rows: string[][];
  /** Columns printed left-aligned (text); the others are numbers, right-aligned. Default: the first. */
  textColumns?: number[];
}

export interface ScenarioReport {
  title: string;
  tables: Table[];
  notes: string[];
  /** Machine-readable numbers for bench/results/latest.json. */
  data: Record<string, unknown>;
  /** The scenario's headline ratios for bench/chart.ts (undefined values are drawn as "n/a"). */
  chart: ChartBar[];
}

/** One bar of the chart: a ratio sidecar / nginx (or another pair named in the label). */
export interface ChartBar {
  /** Bars are grouped by the direction in which the ratio is better. */
  group: 'higher is better' | 'lower is better';
  label: string;
  value: number | undefined;
}

/** A benchmark scenario: add one by writing a file in bench/scenarios/ and listing it in bench/run.ts. */
export interface Scenario {
  name: string;
  summary: string;
  run(context: BenchContext): Promise<ScenarioReport>;
}

export function formatNumber(value: number | undefined, digits = 2): string {
  if (value === undefined || !Number.isFinite(value)) return 'n/a';
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export function keyName(keyType: KeyType): string {
  return keyType === 'rsa' ? 'RSA 2048' : 'ECDSA P-256';
}

export function ratio(numerator: number | undefined, denominator: number | undefined): number | undefined {
  if (numerator === undefined || denominator === undefined || denominator === 0) return undefined;
  return numerator / denominator;
}
