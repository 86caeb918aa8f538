/**
 * The server extension's REST API (`{base_url}nexus/api/`), through
 * ServerConnection.makeRequest: the page's token and XSRF cookie are handled by
 * JupyterLab, and a non-default base_url works.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { ISandbox } from './model';

/** An answer other than success: the API's one-line message and the HTTP status. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

export const ENABLE_COMMAND = 'jupyter server extension enable nexus_jupyter';

export async function requestAPI<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'nexus', 'api', path);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ApiError(`cannot reach the Jupyter server: ${error}`, 0);
  }
  const text = await response.text();
  let body: any = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    if (response.status === 404 && (body === null || body.message === undefined)) {
      // Jupyter's own 404 page: the route is not there at all.
      throw new ApiError(
        `the nexus_jupyter server extension is not enabled on this server: run \`${ENABLE_COMMAND}\` and restart it`,
        404
      );
    }
    throw new ApiError(body?.message ?? `${response.status} ${response.statusText}`, response.status);
  }
  return body as T;
}

export async function listSandboxes(includeStopped: boolean, allUsers: boolean): Promise<ISandbox[]> {
  const query = new URLSearchParams();
  if (includeStopped) {
    query.set('all', '1');
  }
  if (allUsers) {
    query.set('user', '*');
  }
  const suffix = query.toString() ? `?${query}` : '';
  const answer = await requestAPI<{ sandboxes: ISandbox[] }>(`sandboxes${suffix}`);
  return answer.sandboxes;
}

export function sandboxAction(sandboxId: string, action: 'pause' | 'resume' | 'stop'): Promise<ISandbox> {
  return requestAPI<ISandbox>(`sandboxes/${encodeURIComponent(sandboxId)}/${action}`, { method: 'POST' });
}

export interface ICreateRequest {
  name: string;
  ttl_minutes?: number;
  provider?: string;
  template_id?: string;
  allow_internet?: boolean;
}

export function createSandbox(request: ICreateRequest): Promise<ISandbox> {
  return requestAPI<ISandbox>('sandboxes', { method: 'POST', body: JSON.stringify(request) });
}

/** One line of `POST sandboxes/{id}/run` (NDJSON; RunEvent in openapi.json). */
export interface IRunEvent {
  type: 'start' | 'stdout' | 'stderr' | 'result' | 'error' | 'end' | 'failed';
  text?: string;
  data?: Record<string, unknown>;
  name?: string;
  value?: string;
  message?: string;
  timed_out?: boolean;
  result?: { exit_code: number; execution_time: number };
}

/** Run code in a sandbox, passing each event to ``onEvent`` as it arrives (the output streams). */
export async function runCode(
  sandboxId: string,
  request: { code: string; language: string; timeout?: number },
  onEvent: (event: IRunEvent) => void
): Promise<void> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'nexus', 'api', 'sandboxes', encodeURIComponent(sandboxId), 'run');
  const response = await ServerConnection.makeRequest(url, { method: 'POST', body: JSON.stringify(request) }, settings);
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    throw new ApiError(body?.message ?? `${response.status} ${response.statusText}`, response.status);
  }
  const reader = response.body!.getReader();
  const decoder = new TextDecoder();
  let pending = '';
  for (;;) {
    const { done, value } = await reader.read();
    pending += decoder.decode(value ?? new Uint8Array(), { stream: !done });
    const lines = pending.split('\n');
    pending = lines.pop() ?? '';
    for (const line of lines) {
      if (line.trim()) {
        onEvent(JSON.parse(line) as IRunEvent);
      }
    }
    if (done) {
      return;
    }
  }
}
