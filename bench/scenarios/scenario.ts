import type { BenchPki, KeyType } from '../lib/pki.js';
import type { BenchTools } from '../lib/tools.js';

export interface BenchSettings {
  /** wrk syntax, e.g. "10s", "1m". */
  duration: string;
  durationSeconds: number;
  warmup: string;
  connections: number;
  threads: number;
  keyType: KeyType;
}

/** What every scenario gets: tools, settings, one PKI and one app shared by all setups. */
export interface BenchContext {
  tools: BenchTools;
  settings: BenchSettings;
  pki: BenchPki;
  /** A fresh directory per scenario run lives under here. */
  workDir: string;
  appPort: number;
  appDescription: string;
}

export interface Table {
  header: string[];
  rows: string[][];
}

export interface ScenarioReport {
  title: string;
  tables: Table[];
  notes: string[];
  /** Machine-readable numbers for bench/results/latest.json. */
  data: Record<string, unknown>;
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

export function ratio(numerator: number | undefined, denominator: number | undefined): number | undefined {
  if (numerator === undefined || denominator === undefined || denominator === 0) return undefined;
  return numerator / denominator;
}
