/**
 * The server extension's REST API (`{base_url}nexus/api/`), through
 * ServerConnection.makeRequest: the page's token and XSRF cookie are handled by
 * JupyterLab, and a non-default base_url works.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { IFileEntry, IMetrics, ISandbox } from './model';

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

/** The API's URL for ``path`` on this server (its base_url), and the settings to reach it. */
function apiUrl(path: string): { url: string; settings: ServerConnection.ISettings } {
  const settings = ServerConnection.makeSettings();
  return { url: URLExt.join(settings.baseUrl, 'nexus', 'api', path), settings };
}

/** The error an unsuccessful answer stands for (its JSON body read as far as it goes). */
function answerError(response: Response, body: any): ApiError {
  if (response.status === 404 && (body === null || body.message === undefined)) {
    // Jupyter's own 404 page: the route is not there at all.
    return new ApiError(
      `the nexus_jupyter server extension is not enabled on this server: run \`${ENABLE_COMMAND}\` and restart it`,
      404
    );
  }
  return new ApiError(body?.message ?? `${response.status} ${response.statusText}`, response.status);
}

async function send(path: string, init: RequestInit): Promise<Response> {
  const { url, settings } = apiUrl(path);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ApiError(`cannot reach the Jupyter server: ${error}`, 0);
  }
  if (!response.ok) {
    throw answerError(response, await response.json().catch(() => null));
  }
  return response;
}

export async function requestAPI<T>(path: string, init: RequestInit = {}): Promise<T> {
  const text = await (await send(path, init)).text();
  return (text ? JSON.parse(text) : null) as T;
}

/** Which sandboxes `listSandboxes` reads. */
export interface IListQuery {
  includeStopped?: boolean;
  allUsers?: boolean; // admins only (the API answers 403 to others)
  kernelId?: string; // the one a notebook's kernel uses by default
}

export async function listSandboxes(query: IListQuery = {}): Promise<ISandbox[]> {
  const params = new URLSearchParams();
  if (query.includeStopped) {
    params.set('all', '1');
  }
  if (query.allUsers) {
    params.set('all_users', '1');
  }
  if (query.kernelId) {
    params.set('kernel_id', query.kernelId);
  }
  const search = params.toString();
  const answer = await requestAPI<{ sandboxes: ISandbox[] }>(`sandboxes${search ? `?${search}` : ''}`);
  return answer.sandboxes;
}

export function whoAmI(): Promise<{ user_id: string; is_admin: boolean }> {
  return requestAPI('whoami');
}

export function sandboxMetrics(sandboxId: string): Promise<IMetrics> {
  return requestAPI<IMetrics>(`sandboxes/${encodeURIComponent(sandboxId)}/metrics`);
}

/** The URL path of a file in a sandbox, each segment escaped. */
function filePath(sandboxId: string, path: string): string {
  const segments = path.split('/').filter(segment => segment && segment !== '.');
  return `sandboxes/${encodeURIComponent(sandboxId)}/files/${segments.map(encodeURIComponent).join('/')}`;
}

export function listFiles(sandboxId: string, directory: string): Promise<IFileEntry[]> {
  return requestAPI<IFileEntry[]>(
    `sandboxes/${encodeURIComponent(sandboxId)}/files?path=${encodeURIComponent(directory)}`
  );
}

export async function readFile(sandboxId: string, path: string): Promise<Blob> {
  return (await send(filePath(sandboxId, path), { method: 'GET' })).blob();
}

/** Write a file (the body streams from the browser's Blob). */
export function writeFile(sandboxId: string, path: string, content: Blob): Promise<{ path: string; size: number }> {
  return requestAPI(filePath(sandboxId, path), {
    method: 'PUT',
    body: content,
    headers: { 'Content-Type': 'application/octet-stream' }
  });
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
  const response = await send(`sandboxes/${encodeURIComponent(sandboxId)}/run`, {
    method: 'POST',
    body: JSON.stringify(request)
  });
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
