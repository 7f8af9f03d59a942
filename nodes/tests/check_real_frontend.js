// Checks the UI-format example workflows in a running ComfyUI's own frontend
// (not part of CI; see ../README.md). Needs Node.js, `npm install playwright-core`
// and a Chromium (CHROMIUM, default /usr/bin/chromium):
//
//   NODE_PATH=/path/to/node_modules node nodes/tests/check_real_frontend.js [http://127.0.0.1:8188] [tiny]
//
// For each examples/*.json: loads it with the frontend's app.loadGraphData,
// converts it with app.graphToPrompt and compares that with the *.api.json
// twin, then sets the loader to the given model folder, queues it from the
// page and waits for /history; screenshots go to SHOTS (default ./shots).
const { chromium } = require('playwright-core');
const fs = require('fs');
const path = require('path');

const URL = process.argv[2] || 'http://127.0.0.1:8188';
const MODEL = process.argv[3] || 'tiny';
const EXAMPLES = path.join(__dirname, '..', 'examples');
const SHOTS = process.env.SHOTS || 'shots';
const NAMES = ['janus_rs_generate', 'janus_rs_understand', 'janus_rs_vq_roundtrip'];

(async () => {
  fs.mkdirSync(SHOTS, { recursive: true });
  // No first-run template dialog over the canvas.
  await fetch(`${URL}/settings/Comfy.TutorialCompleted`, { method: 'POST', body: 'true' });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage({ viewport: { width: 1500, height: 720 } });
  page.on('pageerror', (e) => console.log('page error:', e.message));
  await page.goto(URL, { waitUntil: 'networkidle' });
  await page.waitForFunction(() => window.app && window.app.graph, null, { timeout: 60000 });
  let ok = true;
  for (const name of NAMES) {
    const ui = JSON.parse(fs.readFileSync(path.join(EXAMPLES, `${name}.json`)));
    const api = JSON.parse(fs.readFileSync(path.join(EXAMPLES, `${name}.api.json`)));
    const output = await page.evaluate(async (wf) => {
      await window.app.loadGraphData(wf);
      return (await window.app.graphToPrompt()).output;
    }, ui);
    const diffs = [];
    for (const [id, node] of Object.entries(api)) {
      const got = output[id];
      if (!got || got.class_type !== node.class_type) { diffs.push(`node ${id} missing`); continue; }
      for (const [key, value] of Object.entries(node.inputs)) {
        if (JSON.stringify(got.inputs[key]) !== JSON.stringify(value)) {
          diffs.push(`${id}.${key}: ${JSON.stringify(got.inputs[key])} != ${JSON.stringify(value)}`);
        }
      }
    }
    if (Object.keys(output).length !== Object.keys(api).length) diffs.push('node count differs');
    console.log(`${name}.json: graphToPrompt ${diffs.length ? 'DIFFERS: ' + diffs.join('; ') : 'gives the .api.json prompt'}`);
    ok = ok && diffs.length === 0;
    const before = Object.keys(await (await fetch(`${URL}/history`)).json());
    await page.evaluate(async (model) => {
      for (const n of window.app.graph._nodes) {
        if (n.type === 'JanusRSModelLoader') n.widgets.find((w) => w.name === 'model').value = model;
      }
      await window.app.queuePrompt(0, 1);
    }, MODEL);
    let entry = null;
    for (let i = 0; i < 600 && !entry; i++) {
      await page.waitForTimeout(500);
      const history = await (await fetch(`${URL}/history`)).json();
      const fresh = Object.keys(history).filter((id) => !before.includes(id));
      if (fresh.length && history[fresh[0]].status.completed !== undefined) entry = history[fresh[0]];
    }
    const status = entry ? entry.status.status_str : 'not finished';
    console.log(`${name}.json: queued from the page on ${MODEL}: ${status}`);
    ok = ok && status === 'success';
    await page.waitForTimeout(1000);
    await page.screenshot({ path: path.join(SHOTS, `${name}.png`), clip: { x: 60, y: 40, width: 1420, height: 600 } });
  }
  await browser.close();
  console.log(ok ? 'OK' : 'FAILED');
  process.exit(ok ? 0 : 1);
})().catch((e) => { console.error(e); process.exit(2); });
