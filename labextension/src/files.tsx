/**
 * A sandbox's files: browse its directories, download a file, upload by dropping
 * files on the list (or choosing them), through the REST API's files routes.
 */
import * as React from 'react';

import { ApiError, listFiles, readFile, writeFile } from './api';
import { formatBytes, IFileEntry } from './model';

function message(error: unknown): string {
  return error instanceof ApiError ? error.message : String(error);
}

function parentOf(directory: string): string {
  const parts = directory.split('/').filter(part => part && part !== '.');
  parts.pop();
  return parts.length ? parts.join('/') : '.';
}

/** The box's home, from the absolute paths of a listing of it; paths are shown relative to it. */
function homeOf(entries: IFileEntry[]): string | null {
  const first = entries[0]?.path;
  return first && first.startsWith('/') ? first.slice(0, first.lastIndexOf('/')) : null;
}

function relativeTo(home: string | null, path: string): string {
  return home && path.startsWith(`${home}/`) ? path.slice(home.length + 1) : path;
}

function joinPath(directory: string, name: string): string {
  return directory === '.' ? name : `${directory.replace(/\/+$/, '')}/${name}`;
}

export function SandboxFiles(props: { sandboxId: string }): JSX.Element {
  const [directory, setDirectory] = React.useState('.');
  const [entries, setEntries] = React.useState<IFileEntry[]>([]);
  const [error, setError] = React.useState('');
  const [note, setNote] = React.useState('');
  const [dragging, setDragging] = React.useState(false);
  const home = React.useRef<string | null>(null);
  const shown = React.useRef('.'); // the directory shown, or being opened
  const asked = React.useRef(0);
  const chooser = React.useRef<HTMLInputElement>(null);

  const open = async (target: string) => {
    const question = ++asked.current;
    shown.current = target;
    try {
      const listed = await listFiles(props.sandboxId, target);
      if (question !== asked.current) {
        return; // another directory was opened meanwhile
      }
      if (target === '.') {
        home.current = homeOf(listed) ?? home.current;
      }
      setEntries(listed.map(entry => ({ ...entry, path: relativeTo(home.current, entry.path) })));
      setDirectory(target);
      setError('');
    } catch (failure) {
      if (question === asked.current) {
        setError(message(failure));
      }
    }
  };

  React.useEffect(() => {
    void open('.');
  }, [props.sandboxId]);

  const download = async (entry: IFileEntry) => {
    try {
      const url = URL.createObjectURL(await readFile(props.sandboxId, entry.path));
      const link = document.createElement('a');
      link.href = url;
      link.download = entry.name;
      document.body.appendChild(link);
      link.click();
      link.remove();
      window.setTimeout(() => URL.revokeObjectURL(url), 60_000);
      setError('');
    } catch (failure) {
      setError(`${entry.name}: ${message(failure)}`);
    }
  };

  const upload = async (files: File[]) => {
    const into = shown.current; // where the files were dropped, whatever is opened meanwhile
    for (const file of files) {
      setNote(`uploading ${file.name}…`);
      try {
        const written = await writeFile(props.sandboxId, joinPath(into, file.name), file);
        setNote(`uploaded ${relativeTo(home.current, written.path)} (${formatBytes(written.size)})`);
        setError('');
      } catch (failure) {
        setNote('');
        setError(`${file.name}: ${message(failure)}`);
        break;
      }
    }
    if (shown.current === into) {
      await open(into);
    }
  };

  return (
    <div
      className={`jp-NexusSandboxes-files${dragging ? ' jp-mod-dropTarget' : ''}`}
      onDragOver={event => {
        event.preventDefault();
        event.dataTransfer.dropEffect = 'copy';
        setDragging(true);
      }}
      onDragLeave={() => setDragging(false)}
      onDrop={event => {
        event.preventDefault();
        setDragging(false);
        void upload(Array.from(event.dataTransfer.files));
      }}
    >
      <div className="jp-NexusSandboxes-filesBar">
        <button
          className="jp-mod-styled jp-NexusSandboxes-up"
          title="Parent directory"
          disabled={directory === '.'}
          onClick={() => void open(parentOf(directory))}
        >
          ↑
        </button>
        <span className="jp-NexusSandboxes-cwd">~/{directory === '.' ? '' : directory}</span>
        <button className="jp-mod-styled jp-NexusSandboxes-upload" onClick={() => chooser.current?.click()}>
          Upload…
        </button>
        <input
          ref={chooser}
          type="file"
          multiple
          hidden
          onChange={event => {
            const chosen = Array.from(event.target.files ?? []);
            event.target.value = '';
            void upload(chosen);
          }}
        />
      </div>
      {error && (
        <div className="jp-NexusSandboxes-error" role="alert">
          {error}
        </div>
      )}
      {note && <div className="jp-NexusSandboxes-note">{note}</div>}
      <ul className="jp-NexusSandboxes-fileList">
        {entries.length === 0 && !error && <li className="jp-NexusSandboxes-empty">Empty: drop files here.</li>}
        {entries.map(entry => (
          <li key={entry.path} className="jp-NexusSandboxes-file" data-path={entry.path}>
            {entry.type === 'dir' ? (
              <a className="jp-NexusSandboxes-dir" onClick={() => void open(entry.path)}>
                {entry.name}/
              </a>
            ) : (
              <a
                className="jp-NexusSandboxes-download"
                title={`Download ${entry.name}`}
                onClick={() => void download(entry)}
              >
                {entry.name}
              </a>
            )}
            <span className="jp-NexusSandboxes-size">{entry.type === 'dir' ? '' : formatBytes(entry.size)}</span>
          </li>
        ))}
      </ul>
    </div>
  );
}
