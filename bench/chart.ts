/**
 * The headline ratios of a bench run as a hand-written SVG bar chart (no dependency), from
 * bench/results/latest.json to bench/results/chart.svg (and chart.png when `rsvg-convert` is
 * installed). Run by `npm run bench -- chart`, and at the end of every bench run.
 *
 * Bars start at 1x (parity with nginx) on a log2 scale, so 0.5x and 2x are the same length on
 * either side. Each scenario decides its bars (`ScenarioReport.chart`); this file only draws them.
 */
import { spawnSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { findExecutable } from './lib/tools.js';
import type { ChartBar } from './scenarios/scenario.js';

/** The part of results/latest.json the chart reads. */
export interface ChartInput {
  date: string;
  command: string;
  machine: { cpus: number; cpuModel: string };
  versions: Record<string, string>;
  chart: ChartBar[];
}

const benchDir = path.dirname(fileURLToPath(import.meta.url));
export const RESULTS_FILE = path.join(benchDir, 'results', 'latest.json');
export const CHART_FILE = path.join(benchDir, 'results', 'chart.svg');

const WIDTH = 960;
const LABEL_X = 16;
const PLOT_LEFT = 470;
const PLOT_RIGHT = WIDTH - 70;
const ROW = 24;
const BAR = 16;
const GROUP_COLORS: Record<ChartBar['group'], string> = { 'higher is better': '#4c78a8', 'lower is better': '#f58518' };
/** The scale never extends beyond 1/32x .. 32x; longer bars are clipped and marked. */
const MAX_EXPONENT = 5;

function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function formatRatio(value: number): string {
  return `${value.toFixed(value >= 10 ? 1 : 2)}×`;
}

function tickLabel(exponent: number): string {
  return exponent >= 0 ? `${2 ** exponent}×` : `1/${2 ** -exponent}×`;
}

/** The log2 range to draw: at least 1/2x .. 2x, widened to whole powers of two around the data. */
function exponentRange(values: number[]): [number, number] {
  const logs = values.map(Math.log2);
  const low = Math.max(-MAX_EXPONENT, Math.min(-1, Math.floor(Math.min(...logs, 0))));
  const high = Math.min(MAX_EXPONENT, Math.max(1, Math.ceil(Math.max(...logs, 0))));
  return [low, high];
}

export function renderChartSvg(input: ChartInput): string {
  const bars = input.chart;
  const known = bars.map((bar) => bar.value).filter((value): value is number => value !== undefined && Number.isFinite(value) && value > 0);
  const [low, high] = exponentRange(known);
  const x = (value: number): number => PLOT_LEFT + ((Math.log2(value) - low) / (high - low)) * (PLOT_RIGHT - PLOT_LEFT);
  const one = x(1);

  const parts: string[] = [];
  let y = 78;
  const groups = (['higher is better', 'lower is better'] as const).map((group) => ({ group, bars: bars.filter((bar) => bar.group === group) }));
  for (const { group, bars: groupBars } of groups) {
    if (groupBars.length === 0) continue;
    y += 10;
    parts.push(`<text x="${LABEL_X}" y="${y + 12}" class="group">${escapeXml(`${group === 'higher is better' ? 'Throughput' : 'Cost'} (${group})`)}</text>`);
    y += ROW;
    for (const bar of groupBars) {
      const middle = y + BAR / 2;
      parts.push(`<text x="${LABEL_X + 8}" y="${middle + 4}" class="label">${escapeXml(bar.label)}</text>`);
      if (bar.value === undefined || !Number.isFinite(bar.value) || bar.value <= 0) {
        parts.push(`<text x="${one + 6}" y="${middle + 4}" class="na">n/a (not measured in this run)</text>`);
      } else {
        const clipped = Math.min(Math.max(bar.value, 2 ** low), 2 ** high);
        const end = x(clipped);
        const [left, right] = end >= one ? [one, end] : [end, one];
        parts.push(`<rect x="${left.toFixed(1)}" y="${y}" width="${Math.max(1, right - left).toFixed(1)}" height="${BAR}" fill="${GROUP_COLORS[group]}"/>`);
        const marker = clipped !== bar.value ? ' (clipped)' : '';
        const text = `${formatRatio(bar.value)}${marker}`;
        parts.push(
          end >= one
            ? `<text x="${(end + 4).toFixed(1)}" y="${middle + 4}" class="value">${escapeXml(text)}</text>`
            : `<text x="${(end - 4).toFixed(1)}" y="${middle + 4}" class="value" text-anchor="end">${escapeXml(text)}</text>`,
        );
      }
      y += ROW;
    }
  }
  const plotTop = 70;
  const plotBottom = y + 4;
  const grid: string[] = [];
  for (let exponent = low; exponent <= high; exponent += 1) {
    const gx = x(2 ** exponent).toFixed(1);
    grid.push(`<line x1="${gx}" y1="${plotTop}" x2="${gx}" y2="${plotBottom}" class="${exponent === 0 ? 'parity' : 'grid'}"/>`);
    grid.push(`<text x="${gx}" y="${plotTop - 6}" class="tick" text-anchor="middle">${tickLabel(exponent)}</text>`);
  }
  const height = plotBottom + 52;
  const subtitle = `${input.date.slice(0, 16).replace('T', ' ')} UTC · ${input.machine.cpus} × ${input.machine.cpuModel} · node ${input.versions.node ?? '?'}, nginx ${input.versions.nginx ?? '?'} · ${input.command}`;
  return `<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by bench/chart.ts from bench/results/latest.json -->
<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">
<style>
  .title { font-size: 17px; font-weight: bold; fill: #222; }
  .subtitle { font-size: 11px; fill: #666; }
  .group { font-size: 13px; font-weight: bold; fill: #333; }
  .label { font-size: 12px; fill: #333; }
  .value { font-size: 12px; fill: #222; }
  .na { font-size: 12px; fill: #999; font-style: italic; }
  .tick { font-size: 11px; fill: #666; }
  .grid { stroke: #ddd; stroke-width: 1; }
  .parity { stroke: #444; stroke-width: 1.5; }
  .footer { font-size: 11px; fill: #666; }
</style>
<rect width="100%" height="100%" fill="#fff"/>
<text x="${LABEL_X}" y="26" class="title">mtls-sidecar vs nginx: ratios from one bench run</text>
<text x="${LABEL_X}" y="44" class="subtitle">${escapeXml(subtitle)}</text>
${grid.join('\n')}
${parts.join('\n')}
<text x="${LABEL_X}" y="${plotBottom + 24}" class="footer">Each bar is a ratio (sidecar / nginx unless named) on a log2 scale; bars start at 1× (parity). Numbers in bench/results/latest.json;</text>
<text x="${LABEL_X}" y="${plotBottom + 40}" class="footer">every setup shares one machine's cores with the load generator, so compare ratios from one run, not absolute numbers.</text>
</svg>
`;
}

/** Reads the results file, writes the SVG (and a PNG beside it when rsvg-convert is installed); returns the files written. */
export async function writeChart(resultsFile = RESULTS_FILE, svgFile = CHART_FILE): Promise<string[]> {
  const input = JSON.parse(await readFile(resultsFile, 'utf8')) as ChartInput;
  if (!Array.isArray(input.chart)) throw new Error(`${resultsFile} has no "chart" entries (written by an older bench?); run \`npm run bench\` first`);
  await writeFile(svgFile, renderChartSvg(input));
  const written = [svgFile];
  const rsvgConvert = findExecutable('rsvg-convert');
  if (rsvgConvert) {
    const pngFile = svgFile.replace(/\.svg$/, '.png');
    const converted = spawnSync(rsvgConvert, ['-o', pngFile, svgFile], { encoding: 'utf8' });
    if (converted.status === 0) written.push(pngFile);
    else process.stderr.write(`bench: rsvg-convert failed, no PNG: ${converted.stderr}\n`);
  }
  return written;
}

// `node --import tsx bench/chart.ts [RESULTS.json [CHART.svg]]` works too.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const written = await writeChart(process.argv[2], process.argv[3]);
  process.stdout.write(`chart written to ${written.map((file) => path.relative(process.cwd(), file)).join(', ')}\n`);
}
