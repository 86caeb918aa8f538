/**
 * nexus-jupyter's JupyterLab extension: the "Sandboxes" sidebar over the server
 * extension's REST API, its commands and its settings.
 */
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Dialog, ICommandPalette, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { ApiError, createSandbox, ICreateRequest } from './api';
import { NotebookSandboxExtension } from './notebook';
import { SandboxesPanel, Section } from './panel';
import { SandboxList } from './sandboxes';

const PLUGIN_ID = 'nexus-jupyter:plugin';

export namespace CommandIDs {
  export const open = 'nexus:open-sandboxes';
  export const refresh = 'nexus:refresh-sandboxes';
  export const create = 'nexus:create-sandbox';
  export const pause = 'nexus:pause-sandbox';
  export const resume = 'nexus:resume-sandbox';
  export const stop = 'nexus:stop-sandbox';
  export const copyId = 'nexus:copy-sandbox-id';
  export const console = 'nexus:open-sandbox-console';
  export const files = 'nexus:open-sandbox-files';
  export const metrics = 'nexus:show-sandbox-metrics';
}

const SANDBOX_SVG =
  '<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">' +
  '<path class="jp-icon3" fill="#616161" d="M3 6l9-4 9 4v12l-9 4-9-4V6zm2 1.3v9.4l7 3.1 7-3.1V7.3l-7 3.1-7-3.1z' +
  'M12 4.2L6.4 6.7 12 9.2l5.6-2.5L12 4.2z"/></svg>';
export const sandboxIcon = new LabIcon({ name: 'nexus-jupyter:sandbox', svgstr: SANDBOX_SVG });

/** The New sandbox form: name, TTL, provider, template, internet. */
class CreateForm extends Widget {
  constructor() {
    super({ node: document.createElement('form') });
    this.addClass('jp-NexusSandboxes-createForm');
    this.node.innerHTML = `
      <label>Name <input name="name" required value="sandbox"></label>
      <label>TTL (minutes idle) <input name="ttl" type="number" min="1" value="10"></label>
      <label>Provider <input name="provider" placeholder="default"></label>
      <label>Template <input name="template" placeholder="provider's default"></label>
      <label><input name="internet" type="checkbox"> Internet access</label>`;
  }

  getValue(): ICreateRequest {
    const field = (name: string) => this.node.querySelector<HTMLInputElement>(`[name="${name}"]`)!;
    const request: ICreateRequest = { name: field('name').value.trim() };
    const ttl = parseInt(field('ttl').value, 10);
    if (!Number.isNaN(ttl)) {
      request.ttl_minutes = ttl;
    }
    if (field('provider').value.trim()) {
      request.provider = field('provider').value.trim();
    }
    if (field('template').value.trim()) {
      request.template_id = field('template').value.trim();
    }
    request.allow_internet = field('internet').checked;
    return request;
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'A sidebar to list, create, pause, resume and stop nexus-jupyter sandboxes.',
  autoStart: true,
  optional: [ILayoutRestorer, ICommandPalette, ISettingRegistry],
  activate: async (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    settingRegistry: ISettingRegistry | null
  ) => {
    const { commands } = app;
    const list = new SandboxList({ refreshSeconds: 5, showStopped: false, allUsers: false });
    const panel = new SandboxesPanel(
      list,
      {
        registry: commands,
        create: CommandIDs.create,
        copyId: CommandIDs.copyId,
        sections: { console: CommandIDs.console, files: CommandIDs.files, metrics: CommandIDs.metrics },
        openNotebook: 'docmanager:open'
      },
      { confirmStop: true }
    );
    panel.title.icon = sandboxIcon;
    panel.title.caption = 'Sandboxes';
    app.shell.add(panel, 'left', { rank: 600 });
    if (restorer) {
      restorer.add(panel, 'nexus-sandboxes');
    }
    app.docRegistry.addWidgetExtension('Notebook', new NotebookSandboxExtension(list, commands, CommandIDs.open));

    const idArg = (args: any) => String(args.sandboxId ?? '');
    commands.addCommand(CommandIDs.open, {
      label: 'Show Sandboxes',
      execute: args => {
        app.shell.activateById(panel.id);
        if (idArg(args)) {
          panel.reveal(idArg(args));
        }
      }
    });
    commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh Sandboxes',
      execute: () => panel.refresh()
    });
    commands.addCommand(CommandIDs.copyId, {
      label: 'Copy Sandbox Id',
      isEnabled: args => !!idArg(args),
      execute: args => navigator.clipboard?.writeText(idArg(args))
    });
    for (const [id, section, label] of [
      [CommandIDs.console, 'console', 'Console'],
      [CommandIDs.files, 'files', 'Files'],
      [CommandIDs.metrics, 'metrics', 'Metrics']
    ] as [string, Section, string][]) {
      commands.addCommand(id, {
        label,
        isEnabled: args => !!idArg(args),
        isToggled: args => panel.isOpen(idArg(args), section),
        execute: args => {
          app.shell.activateById(panel.id);
          panel.toggle(idArg(args), section);
        }
      });
    }
    commands.addCommand(CommandIDs.create, {
      label: 'New Sandbox…',
      execute: async () => {
        const answer = await showDialog({
          title: 'New sandbox',
          body: new CreateForm(),
          buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Create' })]
        });
        if (!answer.button.accept || !answer.value) {
          return;
        }
        try {
          await createSandbox(answer.value);
        } catch (error) {
          await showErrorMessage('Cannot create the sandbox', error instanceof ApiError ? error.message : `${error}`);
        }
        await panel.refresh();
      }
    });
    for (const [id, action, label] of [
      [CommandIDs.pause, 'pause', 'Pause Sandbox'],
      [CommandIDs.resume, 'resume', 'Resume Sandbox'],
      [CommandIDs.stop, 'stop', 'Stop Sandbox']
    ] as const) {
      commands.addCommand(id, {
        label,
        isEnabled: args => !!idArg(args),
        execute: args => panel.act(idArg(args), action)
      });
    }
    if (palette) {
      for (const command of [CommandIDs.open, CommandIDs.refresh, CommandIDs.create]) {
        palette.addItem({ command, category: 'Sandboxes' });
      }
    }

    if (settingRegistry) {
      try {
        const settings = await settingRegistry.load(PLUGIN_ID);
        const apply = () => {
          panel.confirmStop = settings.get('confirmStop').composite as boolean;
          list.configure({
            refreshSeconds: settings.get('refreshInterval').composite as number,
            showStopped: settings.get('showStopped').composite as boolean
          });
        };
        apply();
        settings.changed.connect(apply);
      } catch (reason) {
        console.warn('nexus-jupyter: settings not loaded', reason);
      }
    }
  }
};

export default plugin;
