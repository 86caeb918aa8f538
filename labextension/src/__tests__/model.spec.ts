import {
  actionsFor,
  cpuPercent,
  formatBytes,
  formatDuration,
  ISandbox,
  notebookState,
  parseUtc,
  sparklinePoints,
  timeLeft,
  uptime,
  whereItRuns
} from '../model';

function sandbox(fields: Partial<ISandbox>): ISandbox {
  return {
    sandbox_id: 'sb_0000000000000000',
    name: 'test',
    user_id: 'me',
    agent_id: null,
    tenant_id: 'default',
    provider: 'local',
    template_id: null,
    status: 'active',
    created_at: '2026-11-30T12:00:00',
    last_active_at: '2026-11-30T12:00:00',
    paused_at: null,
    stopped_at: null,
    ttl_minutes: 10,
    expires_at: '2026-11-30T12:10:00',
    uptime_seconds: 0,
    ...fields
  };
}

const noon = Date.UTC(2026, 10, 30, 12, 0, 0);

describe('formatDuration', () => {
  it('shows the two largest units, as the CLI does', () => {
    expect(formatDuration(0)).toBe('0s');
    expect(formatDuration(12.7)).toBe('12s');
    expect(formatDuration(250)).toBe('4m 10s');
    expect(formatDuration(7500)).toBe('2h 5m');
    expect(formatDuration(3 * 86400 + 4 * 3600 + 59)).toBe('3d 4h');
    expect(formatDuration(3600)).toBe('1h 0m');
    expect(formatDuration(-5)).toBe('0s');
  });
});

describe('parseUtc', () => {
  it('reads the API times as UTC', () => {
    expect(parseUtc('2026-11-30T12:00:00')).toBe(noon);
    expect(parseUtc(null)).toBeNull();
    expect(parseUtc('not a time')).toBeNull();
  });
});

describe('timeLeft', () => {
  it('counts down to the expiry', () => {
    expect(timeLeft(sandbox({}), noon)).toBe('10m 0s');
    expect(timeLeft(sandbox({}), noon + 598_500)).toBe('1s');
    expect(timeLeft(sandbox({}), noon + 600_000)).toBe('expiring');
  });
  it('says a paused sandbox does not expire and a stopped one has no time', () => {
    expect(timeLeft(sandbox({ status: 'paused', expires_at: null }), noon)).toBe('paused (no expiry)');
    expect(timeLeft(sandbox({ status: 'stopped', expires_at: null }), noon)).toBe('—');
  });
});

describe('uptime', () => {
  it('keeps counting for a running sandbox between reads, not for a paused one', () => {
    expect(uptime(sandbox({ uptime_seconds: 60 }), noon, noon + 5000)).toBe('1m 5s');
    expect(uptime(sandbox({ status: 'paused', uptime_seconds: 60 }), noon, noon + 5000)).toBe('1m 0s');
  });
});

describe('actionsFor', () => {
  it('offers what the status allows', () => {
    expect(actionsFor('active')).toEqual({ pause: true, resume: false, stop: true, run: true });
    expect(actionsFor('paused')).toEqual({ pause: false, resume: true, stop: true, run: false });
    expect(actionsFor('stopped')).toEqual({ pause: false, resume: false, stop: false, run: false });
    expect(actionsFor('creating')).toEqual({ pause: false, resume: false, stop: true, run: false });
  });
});

describe('formatBytes', () => {
  it('uses the largest unit that keeps a number of at least one', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(1536)).toBe('1.5 KB');
    expect(formatBytes(20 * 1024 * 1024)).toBe('20 MB');
    expect(formatBytes(1024 ** 3)).toBe('1.0 GB');
  });
});

describe('cpuPercent', () => {
  it('is CPU time over wall time, in percent of one core', () => {
    expect(cpuPercent(1.0, 1.5, 1000)).toBeCloseTo(50);
    expect(cpuPercent(1.0, 5.0, 2000)).toBeCloseTo(200);
  });
  it('is unknown without two readings, or when the counter went back (a restart)', () => {
    expect(cpuPercent(null, 1.0, 1000)).toBeNull();
    expect(cpuPercent(2.0, 1.0, 1000)).toBeNull();
    expect(cpuPercent(1.0, 2.0, 0)).toBeNull();
  });
});

describe('sparklinePoints', () => {
  it('spreads the readings across the width, the largest at the top', () => {
    expect(sparklinePoints([0, 5, 10], 100, 20)).toBe('0.0,20.0 50.0,10.0 100.0,0.0');
  });
  it('skips unknown readings and scales to a given ceiling', () => {
    expect(sparklinePoints([null, 50], 10, 10, 100)).toBe('10.0,5.0');
    expect(sparklinePoints([null, null], 10, 10)).toBe('');
  });
});

describe('notebookState', () => {
  it("says what became of the notebook's sandbox", () => {
    expect(notebookState(undefined)).toBe('none yet');
    expect(notebookState(sandbox({ status: 'creating' }))).toBe('starting');
    expect(notebookState(sandbox({ status: 'paused' }))).toBe('paused');
    expect(notebookState(sandbox({ status: 'stopped', stop_reason: 'expired' }))).toBe('expired');
    expect(notebookState(sandbox({ status: 'stopped', stop_reason: 'stopped' }))).toBe('stopped');
  });
});

describe('whereItRuns', () => {
  it('names the host holding the box in a fleet, and only the provider otherwise', () => {
    expect(whereItRuns(sandbox({ provider: 'local', host: 'alpha' }))).toBe('local on alpha');
    expect(whereItRuns(sandbox({ provider: 'docker' }))).toBe('docker');
  });
});
