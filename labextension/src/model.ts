/**
 * What the panel shows about a sandbox, computed from the REST API's record:
 * times, and which actions its status allows.  Pure functions (unit-tested).
 */

export type SandboxStatus = 'creating' | 'active' | 'paused' | 'stopped';

/** A sandbox as `GET {base_url}nexus/api/sandboxes` returns it (nexus_jupyter/openapi.json). */
export interface ISandbox {
  sandbox_id: string;
  name: string;
  user_id: string;
  agent_id: string | null;
  tenant_id: string;
  provider: string;
  template_id: string | null;
  status: SandboxStatus;
  created_at: string;
  last_active_at: string | null;
  paused_at: string | null;
  stopped_at: string | null;
  ttl_minutes: number;
  expires_at: string | null;
  uptime_seconds: number;
  stop_reason?: string; // why a stopped one stopped: stopped, expired, vanished, create failed: …
  notebook?: string; // the notebook whose %%sandbox cells made or chose it (absolute path on the server)
  notebook_path?: string; // that notebook as Lab names it now (under the server's root)
  kernel_id?: string; // the notebook kernel whose %%sandbox cells use it by default
  host?: string; // the host holding its box, when hosts share one PostgreSQL database
}

/** One entry of `GET sandboxes/{id}/files?path=`. */
export interface IFileEntry {
  name: string;
  path: string;
  type: 'file' | 'dir' | 'symlink';
  size: number;
  modified: number;
}

/** `GET sandboxes/{id}/metrics` (null: the provider does not count it). */
export interface IMetrics {
  sandbox_id: string;
  cpu_seconds: number | null;
  memory_bytes: number | null;
  memory_peak_bytes: number | null;
  memory_limit_bytes: number | null;
  processes: number | null;
  disk_used_bytes: number | null;
  disk_limit_bytes: number | null;
  measured_at: string;
}

/** Milliseconds since the epoch of the API's UTC time ("YYYY-MM-DDTHH:MM:SS"), or null. */
/** Where a sandbox runs: its provider, and in a fleet the host holding its box ("local on alpha"). */
export function whereItRuns(sandbox: ISandbox): string {
  return sandbox.host ? `${sandbox.provider} on ${sandbox.host}` : sandbox.provider;
}

export function parseUtc(text: string | null | undefined): number | null {
  if (!text) {
    return null;
  }
  const stamp = Date.parse(text.endsWith('Z') ? text : `${text}Z`);
  return Number.isNaN(stamp) ? null : stamp;
}

/** "3d 4h", "2h 5m", "4m 10s", "12s": the two largest units, as the CLI prints them. */
export function formatDuration(seconds: number): string {
  const total = Math.max(0, Math.floor(seconds));
  const units: [string, number][] = [
    ['d', 86400],
    ['h', 3600],
    ['m', 60],
    ['s', 1]
  ];
  const parts: string[] = [];
  let rest = total;
  for (const [label, size] of units) {
    const count = Math.floor(rest / size);
    rest -= count * size;
    if (count > 0 || (parts.length > 0 && parts.length < 2)) {
      parts.push(`${count}${label}`);
    }
    if (parts.length === 2) {
      break;
    }
  }
  return parts.length ? parts.join(' ') : '0s';
}

/** The time left before an idle sandbox expires, counting down from ``now`` (ms). */
export function timeLeft(sandbox: ISandbox, now: number): string {
  if (sandbox.status === 'paused') {
    return 'paused (no expiry)';
  }
  if (sandbox.status === 'stopped') {
    return '—';
  }
  const expires = parseUtc(sandbox.expires_at);
  if (expires === null) {
    return '—';
  }
  const seconds = (expires - now) / 1000;
  return seconds <= 0 ? 'expiring' : formatDuration(seconds);
}

/** How long the sandbox has been up at ``now``, from the record read at ``readAt``. */
export function uptime(sandbox: ISandbox, readAt: number, now: number): string {
  const running = sandbox.status === 'active' || sandbox.status === 'creating';
  const extra = running ? Math.max(0, now - readAt) / 1000 : 0;
  return formatDuration(sandbox.uptime_seconds + extra);
}

/** The buttons a row offers in its status. */
export interface IActions {
  pause: boolean;
  resume: boolean;
  stop: boolean;
  run: boolean;
}

export function actionsFor(status: SandboxStatus): IActions {
  return {
    pause: status === 'active',
    resume: status === 'paused',
    stop: status !== 'stopped',
    run: status === 'active'
  };
}

/** "512 B", "1.5 KB", "20 MB", "1.0 GB" (powers of 1024, as `ls -h`). */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let value = Math.max(0, bytes);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

/** CPU use between two readings of cpu_seconds taken ``elapsedMs`` apart, in percent of one core. */
export function cpuPercent(before: number | null, after: number | null, elapsedMs: number): number | null {
  if (before === null || after === null || elapsedMs <= 0 || after < before) {
    return null;
  }
  return ((after - before) / (elapsedMs / 1000)) * 100;
}

/** SVG polyline points for ``values`` in a ``width`` x ``height`` box (nulls skipped; the top is
 * ``ceiling`` if given, else the largest value). */
export function sparklinePoints(values: (number | null)[], width: number, height: number, ceiling?: number): string {
  const known = values.filter((value): value is number => value !== null);
  const top = ceiling ?? Math.max(...known, 0);
  if (known.length === 0) {
    return '';
  }
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  return values
    .map((value, index) => {
      if (value === null) {
        return null;
      }
      const y = top > 0 ? height - (Math.min(value, top) / top) * height : height;
      return `${(index * step).toFixed(1)},${y.toFixed(1)}`;
    })
    .filter(point => point !== null)
    .join(' ');
}

/** What a notebook's toolbar item says about its sandbox (the newest it made, or none). */
export type NotebookSandboxState = 'none yet' | 'starting' | 'active' | 'paused' | 'expired' | 'stopped';

export function notebookState(sandbox: ISandbox | undefined): NotebookSandboxState {
  if (!sandbox) {
    return 'none yet';
  }
  if (sandbox.status === 'creating') {
    return 'starting';
  }
  if (sandbox.status !== 'stopped') {
    return sandbox.status;
  }
  return sandbox.stop_reason === 'expired' ? 'expired' : 'stopped';
}
