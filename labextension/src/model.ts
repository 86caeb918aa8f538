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
}

/** Milliseconds since the epoch of the API's UTC time ("YYYY-MM-DDTHH:MM:SS"), or null. */
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
