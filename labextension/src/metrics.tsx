/**
 * A sandbox's live metrics: CPU, memory, processes and disk read from
 * `GET sandboxes/{id}/metrics` every 2 s while the sidebar is shown, each with a sparkline
 * of its recent readings.
 */
import * as React from 'react';

import { ApiError, sandboxMetrics } from './api';
import { cpuPercent, formatBytes, IMetrics, sparklinePoints } from './model';

const READ_EVERY_MS = 2000;
const KEPT_READINGS = 30;
const WIDTH = 60;
const HEIGHT = 18;

interface IReading {
  at: number; // ms, this browser's clock: the API's measured_at has whole seconds only
  metrics: IMetrics;
}

function Sparkline(props: { label: string; values: (number | null)[]; now: string; ceiling?: number }): JSX.Element {
  const points = sparklinePoints(props.values, WIDTH, HEIGHT - 4, props.ceiling); // 2 px spare above and below
  return (
    <div className="jp-NexusSandboxes-metric" data-metric={props.label}>
      <span className="jp-NexusSandboxes-metricLabel">{props.label}</span>
      <svg width={WIDTH} height={HEIGHT} className="jp-NexusSandboxes-sparkline" aria-hidden="true">
        {points && <polyline points={points} fill="none" strokeWidth="1.5" transform="translate(0, 2)" />}
      </svg>
      <span className="jp-NexusSandboxes-metricValue" title={props.now}>
        {props.now}
      </span>
    </div>
  );
}

/** ``shown()``: whether the sidebar is on screen (readings stop while it is not). */
export function SandboxMetrics(props: { sandboxId: string; shown: () => boolean }): JSX.Element {
  const [readings, setReadings] = React.useState<IReading[]>([]);
  const [error, setError] = React.useState('');

  React.useEffect(() => {
    let live = true;
    let timer = 0;
    // One reading at a time, the next READ_EVERY_MS after the last answered (a slow server is
    // not sent more), none while the sidebar is hidden.
    const read = async () => {
      if (props.shown()) {
        try {
          const metrics = await sandboxMetrics(props.sandboxId);
          if (live) {
            setReadings(previous => [...previous, { at: Date.now(), metrics }].slice(-KEPT_READINGS));
            setError('');
          }
        } catch (failure) {
          if (live) {
            setError(failure instanceof ApiError ? failure.message : String(failure));
          }
        }
      }
      if (live) {
        timer = window.setTimeout(() => void read(), READ_EVERY_MS);
      }
    };
    void read();
    return () => {
      live = false;
      window.clearTimeout(timer);
    };
  }, [props.sandboxId]);

  const last = readings[readings.length - 1]?.metrics;
  const cpu = readings.map((reading, index) =>
    index === 0
      ? null
      : cpuPercent(
          readings[index - 1].metrics.cpu_seconds,
          reading.metrics.cpu_seconds,
          reading.at - readings[index - 1].at
        )
  );
  const series = (pick: (metrics: IMetrics) => number | null) => readings.map(reading => pick(reading.metrics));
  const ofLimit = (used: number | null | undefined, limit: number | null | undefined) =>
    used === null || used === undefined
      ? 'not counted'
      : `${formatBytes(used)}${limit ? ` / ${formatBytes(limit)}` : ''}`;
  const lastCpu = cpu[cpu.length - 1];

  return (
    <div className="jp-NexusSandboxes-metrics">
      {error && (
        <div className="jp-NexusSandboxes-error" role="alert">
          {error}
        </div>
      )}
      <Sparkline
        label="CPU"
        values={cpu}
        ceiling={Math.max(100, ...cpu.map(value => value ?? 0))}
        now={
          last?.cpu_seconds === null
            ? 'not counted'
            : lastCpu === null || lastCpu === undefined
              ? '…'
              : `${Math.round(lastCpu)}%`
        }
      />
      <Sparkline
        label="Memory"
        values={series(metrics => metrics.memory_bytes)}
        now={last ? ofLimit(last.memory_bytes, last.memory_limit_bytes) : '…'}
      />
      <Sparkline
        label="Processes"
        values={series(metrics => metrics.processes)}
        now={last ? (last.processes === null ? 'not counted' : String(last.processes)) : '…'}
      />
      <Sparkline
        label="Disk"
        values={series(metrics => metrics.disk_used_bytes)}
        now={last ? ofLimit(last.disk_used_bytes, last.disk_limit_bytes) : '…'}
      />
    </div>
  );
}
