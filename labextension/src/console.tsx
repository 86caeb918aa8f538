/**
 * A console for one sandbox: a Run box whose output streams in from the REST run
 * endpoint (stdout, stderr, the cell's value, its error, the exit code).
 */
import * as React from 'react';

import { ApiError, IRunEvent, runCode } from './api';

interface IOutput {
  kind: 'stdout' | 'stderr' | 'result' | 'note';
  text: string;
}

export function SandboxConsole(props: { sandboxId: string }): JSX.Element {
  const [code, setCode] = React.useState('');
  const [language, setLanguage] = React.useState('python');
  const [output, setOutput] = React.useState<IOutput[]>([]);
  const [running, setRunning] = React.useState(false);

  const append = (item: IOutput) => setOutput(previous => [...previous, item]);

  const onEvent = (event: IRunEvent) => {
    if (event.type === 'stdout' || event.type === 'stderr') {
      append({ kind: event.type, text: event.text ?? '' });
    } else if (event.type === 'result') {
      const plain = event.data?.['text/plain'];
      append({ kind: 'result', text: typeof plain === 'string' ? plain + '\n' : '[rich output]\n' });
    } else if (event.type === 'end') {
      const note = event.timed_out ? event.message : `exit code ${event.result?.exit_code}`;
      append({ kind: 'note', text: `[${note}]\n` });
    } else if (event.type === 'failed') {
      append({ kind: 'note', text: `[failed: ${event.message}]\n` });
    }
  };

  const run = async () => {
    if (!code.trim() || running) {
      return;
    }
    setRunning(true);
    try {
      await runCode(props.sandboxId, { code, language }, onEvent);
    } catch (error) {
      append({ kind: 'note', text: `[${error instanceof ApiError ? error.message : error}]\n` });
    } finally {
      setRunning(false);
    }
  };

  return (
    <div className="jp-NexusSandboxes-console">
      <div className="jp-NexusSandboxes-consoleInput">
        <select value={language} onChange={event => setLanguage(event.target.value)} aria-label="Language">
          <option value="python">Python</option>
          <option value="javascript">JavaScript</option>
          <option value="bash">Bash</option>
        </select>
        <textarea
          value={code}
          placeholder="Code to run (Shift+Enter)"
          onChange={event => setCode(event.target.value)}
          onKeyDown={event => {
            if (event.key === 'Enter' && event.shiftKey) {
              event.preventDefault();
              void run();
            }
          }}
        />
        <button className="jp-mod-styled jp-mod-accept" disabled={running} onClick={() => void run()}>
          Run
        </button>
      </div>
      <pre className="jp-NexusSandboxes-output">
        {output.map((item, index) => (
          <span key={index} className={`jp-mod-${item.kind}`}>
            {item.text}
          </span>
        ))}
      </pre>
    </div>
  );
}
