// Registries: the organization's private registries, Add Registry with a tab per provider.
import { api } from './api.js';
import { el, mount, table, fmtDate, dialog, confirmDialog, field, toast, errorBox, pageHeader, busy, nextId } from './ui.js';
import { session } from './app.js';

const PROVIDER_NAMES = { dockerhub: 'Docker Hub', google: 'Google Artifact Registry', github: 'GitHub Container Registry', ecr: 'Amazon ECR', generic: 'Generic' };

// Each tab's visible fields: [body key, label, input type, hint]; `fixed` are sent unseen.
const TABS = [
  { type: 'dockerhub', label: 'Docker Hub', fixed: { url: 'docker.io' }, note: 'Registry URL is docker.io; it is filled in for you.',
    fields: [['username', 'Username', 'text', 'The Docker Hub account with access to the image.'],
      ['password', 'Personal Access Token', 'password', 'A Docker Hub access token, not the account password.']],
    example: 'docker.io/<username>/<image>:<tag>' },
  { type: 'google', label: 'Google', fixed: { username: '_json_key' }, note: 'The user name is _json_key, as Google requires for service-account keys; it is filled in for you.',
    fields: [['url', 'Registry URL', 'text', 'The base URL of your region, e.g. https://us-central1-docker.pkg.dev'],
      ['password', 'Service Account JSON Key', 'textarea', 'Paste the whole JSON key file.'],
      ['project', 'Google Cloud Project ID', 'text', 'Your GCP project id.']],
    example: 'us-central1-docker.pkg.dev/<project>/<repo>/<image>:<tag>' },
  { type: 'github', label: 'GitHub', fixed: { url: 'ghcr.io' }, note: 'Registry URL is ghcr.io; it is filled in for you.',
    fields: [['username', 'GitHub Username', 'text', 'The account with access to the image.'],
      ['password', 'Personal Access Token', 'password', 'A GitHub token with read:packages (plus write:/delete:packages to push or delete).']],
    example: 'ghcr.io/<owner>/<image>:<tag>' },
  { type: 'ecr', label: 'Amazon ECR', fixed: {}, note: null,
    fields: [['url', 'Registry URL', 'text', '<account_id>.dkr.ecr.<region>.amazonaws.com'],
      ['roleArn', 'Role ARN', 'text', 'The role you created, e.g. arn:aws:iam::123456789012:role/cove-ecr-puller. It is assumed at every pull.']],
    example: '<account_id>.dkr.ecr.<region>.amazonaws.com/<repo>/<image>:<tag>' },
  { type: 'generic', label: 'Generic', fixed: {}, note: null,
    fields: [['url', 'Registry URL', 'text', 'Host and optional port and path, e.g. registry.example.com:5000'],
      ['username', 'Username', 'text', null],
      ['password', 'Password', 'password', 'Stored sealed; never shown again.'],
      ['project', 'Project (optional)', 'text', 'A namespace below the URL this registry is for.']],
    example: 'registry.example.com/<repo>/<image>:<tag>' },
];

export async function render() {
  const body = el('div', {}, el('p', { class: 'muted' }, 'Loading registries…'));
  mount(pageHeader('Registries', el('button', { type: 'button', class: 'primary', onclick: () => addDialog(refresh) }, 'Add Registry')),
    el('p', { class: 'lead' }, 'Credentials for private registries. A snapshot whose image lives under a registry’s URL is pulled with them. Secrets are write-only.'),
    body);
  async function refresh() {
    try {
      const regs = await api('GET', '/docker-registry');
      body.replaceChildren(table(['Name', 'Provider', 'URL', 'Username', 'Project', 'Created', el('span', { class: 'sr-only' }, 'Actions')],
        regs.map((r) => el('tr', { 'data-name': r.name },
          el('th', { scope: 'row' }, r.name),
          el('td', {}, PROVIDER_NAMES[r.provider] || r.provider),
          el('td', { class: 'mono' }, r.url), el('td', { class: 'mono' }, r.username || '—'),
          el('td', {}, r.project || (r.roleArn ? el('span', { class: 'mono' }, r.roleArn) : '—')),
          el('td', {}, fmtDate(r.createdAt)),
          el('td', { class: 'row-actions' }, el('button', { type: 'button', class: 'ghost danger-text', 'aria-label': `Delete registry ${r.name}`,
            onclick: async () => {
              if (!(await confirmDialog(`Delete registry ${r.name}?`, `Snapshots can no longer pull from ${r.url} with these credentials. This cannot be undone.`))) return;
              try { await api('DELETE', `/docker-registry/${encodeURIComponent(r.id)}`); toast(`${r.name}: deleted`); } catch (err) { toast(err.message, 'error'); }
              refresh();
            } }, 'Delete')))),
        'No registries. Public images need none.'));
    } catch (err) {
      body.replaceChildren(errorBox(err));
    }
  }
  await refresh();
}

// The ECR tab's help: the trust policy to give the role, with the server's own AWS identity
// (GET /docker-registry/ecr-broker) as its Principal once the server has told it.
function ecrHelp() {
  const org = session.whoami?.organizationId || '<your organization id>';
  const PENDING = '<the IAM identity of the Cove server’s AWS credentials>';
  const trustFor = (principal, externalId) => JSON.stringify({
    Version: '2012-10-17',
    Statement: [{ Effect: 'Allow', Principal: { AWS: principal }, Action: 'sts:AssumeRole',
      Condition: { StringEquals: { 'sts:ExternalId': externalId } } }],
  }, null, 2);
  const perms = JSON.stringify({
    Version: '2012-10-17',
    Statement: [{ Effect: 'Allow', Action: ['ecr:GetAuthorizationToken', 'ecr:BatchCheckLayerAvailability', 'ecr:GetDownloadUrlForLayer', 'ecr:BatchGetImage'], Resource: '*' }],
  }, null, 2);
  const trust = el('pre', { class: 'code', 'data-policy': 'trust' }, trustFor(PENDING, org));
  const brokerArn = el('code', { 'data-broker': 'pending' }, 'asking the server…');
  const externalId = el('code', {}, org);
  const sessionName = el('code', {}, `cove-${org}-pull`);
  const problem = el('div', { 'aria-live': 'polite' });
  api('GET', '/docker-registry/ecr-broker').then((b) => {
    brokerArn.textContent = b.principalArn;
    brokerArn.dataset.broker = 'known';
    externalId.textContent = b.externalId;
    sessionName.textContent = b.sessionName;
    trust.textContent = trustFor(b.principalArn, b.externalId);
  }, (err) => {
    brokerArn.textContent = 'unknown';
    brokerArn.dataset.broker = 'unknown';
    problem.replaceChildren(el('div', { class: 'alert warn', role: 'status' },
      el('p', {}, 'The server cannot tell its AWS identity, so ECR pulls will fail until its administrator fixes this:'),
      err.message));
  });
  return el('details', { class: 'help', open: true },
    el('summary', {}, 'Before you start: a role Cove can assume'),
    el('p', {}, 'No AWS keys are stored for ECR. At each pull the Cove server assumes a role in your account with STS AssumeRole and fetches a short-lived ECR token.'),
    el('ul', {},
      el('li', {}, 'Broker identity (the trust policy’s Principal): ', brokerArn, '. It is the IAM user or role whose credentials the Cove server runs with (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in its environment).'),
      el('li', {}, 'External ID: your organization id ', externalId, '.'),
      el('li', {}, 'Session name: ', sessionName, ' (you may require it with sts:RoleSessionName).')),
    problem,
    el('p', {}, 'Create a role with this trust policy:'), trust,
    el('p', {}, 'and this permissions policy (read-only ECR):'), el('pre', { class: 'code' }, perms),
    el('p', {}, 'Then enter the registry URL and the new role’s ARN below. No password is used.'));
}

function addDialog(refresh) {
  dialog('Add Registry', (close) => {
    const err = el('div', { 'aria-live': 'assertive' });
    const name = el('input', { name: 'name', required: true, autocomplete: 'off' });
    const panes = new Map();
    const tabButtons = [];
    let current = TABS[0];
    const paneFor = (t) => {
      const inputs = {};
      const pane = el('div', { role: 'tabpanel', id: nextId('pane'), 'data-provider': t.type, hidden: t !== current },
        t.type === 'ecr' ? ecrHelp() : null,
        t.fields.map(([key, label, type, hint]) => {
          const input = type === 'textarea'
            ? el('textarea', { name: key, rows: 5, class: 'mono', spellcheck: 'false' })
            : el('input', { name: key, type, autocomplete: type === 'password' ? 'new-password' : 'off', class: key === 'url' || key === 'roleArn' ? 'mono' : '' });
          inputs[key] = input;
          return field(label, input, hint);
        }),
        t.note ? el('p', { class: 'muted small' }, t.note) : null,
        el('p', { class: 'muted small' }, 'Then create snapshots with the full image name, e.g. ', el('code', {}, t.example), '.'));
      panes.set(t.type, { pane, inputs });
      return pane;
    };
    const select = (t, focus) => {
      current = t;
      for (const [i, b] of tabButtons.entries()) {
        const on = TABS[i] === t;
        b.setAttribute('aria-selected', String(on)); b.tabIndex = on ? 0 : -1;
        panes.get(TABS[i].type).pane.hidden = !on;
      }
      if (focus) tabButtons[TABS.indexOf(t)].focus();
    };
    const allPanes = TABS.map(paneFor);
    const tabs = el('div', { role: 'tablist', class: 'tabs', 'aria-label': 'Provider' }, TABS.map((t, i) => {
      const b = el('button', { type: 'button', role: 'tab', 'aria-selected': String(i === 0), tabindex: i === 0 ? '0' : '-1',
        'aria-controls': panes.get(t.type).pane.id, 'data-provider': t.type, onclick: () => select(t) }, t.label);
      tabButtons.push(b);
      return b;
    }));
    tabs.addEventListener('keydown', (e) => {
      const i = TABS.indexOf(current);
      if (e.key === 'ArrowRight') { e.preventDefault(); select(TABS[(i + 1) % TABS.length], true); }
      if (e.key === 'ArrowLeft') { e.preventDefault(); select(TABS[(i - 1 + TABS.length) % TABS.length], true); }
    });
    const submit = el('button', { type: 'submit', class: 'primary' }, 'Add');
    const form = el('form', { novalidate: true, onsubmit: async (e) => {
      e.preventDefault();
      err.replaceChildren();
      const body = { name: name.value.trim(), type: current.type, ...current.fixed };
      for (const [k, input] of Object.entries(panes.get(current.type).inputs)) {
        if (input.value.trim()) body[k] = k === 'password' ? input.value : input.value.trim();
      }
      try {
        const r = await busy(submit, 'Adding…', () => api('POST', '/docker-registry', body));
        toast(`${r.name}: added`);
        close();
        refresh();
      } catch (ex) {
        err.replaceChildren(errorBox(ex));
      }
    } },
    tabs,
    field('Registry name', name, 'A label for this registry.'),
    allPanes, err,
    el('div', { class: 'actions' }, el('button', { type: 'button', class: 'ghost', onclick: close }, 'Cancel'), submit));
    setTimeout(() => tabButtons[0].focus());
    return form;
  }, { wide: true });
}
