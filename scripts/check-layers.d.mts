/** Types of scripts/check-layers.mjs (the layering check), for test/layers.test.ts. */
export interface Allowance {
  from: string;
  to: string;
  reason: string;
}
export interface LayerReport {
  violations: string[];
  cycles: string[];
  stale: string[];
  unresolved: string[];
}
export const ALLOWED: Allowance[];
export const ALLOWED_CYCLES: string[];
export const RULES: Record<string, { runtime: string[]; types?: string[] }>;
export const SRC: string;
export function layerOf(file: string): string | undefined;
export function serverSideOf(file: string): "protocol" | "client" | "server" | undefined;
export function crossing(from: string, to: string, typeOnly: boolean): string | undefined;
export function stripComments(src: string): string;
export function importsOf(src: string): Array<{ specifier: string; typeOnly: boolean }>;
export function checkSources(sources: Map<string, string>, allowed?: Allowance[], allowedCycles?: string[]): LayerReport;
export function readSources(srcDir: string): Map<string, string>;
export function checkLayers(srcDir?: string): LayerReport;
