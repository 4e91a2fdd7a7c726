// Drives tus-js-client against a VaultFS server (tests/tus.rs).
// usage: node tus_js.mjs MODE ENDPOINT FILE VAULTFS_PATH
//   parallel  parallelUploads: 4 (partial uploads, then one final concatenation)
//   creation  uploadDataDuringCreation: true
//   abort     starts an upload, then abort(true) after the first chunk: termination
// Prints one JSON line with the upload URL (and, for abort, that the abort returned).
import { createRequire } from "module";
import fs from "fs";
const require = createRequire(process.env.NODE_MODULES_DIR + "/");
const tus = require("tus-js-client");

const [mode, endpoint, file, target] = process.argv.slice(2);
const data = fs.readFileSync(file);

function run(options) {
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(data, {
      endpoint,
      metadata: { path: target },
      retryDelays: [100, 500, 1000],
      ...options,
      onError: reject,
      onSuccess: () => resolve(upload),
      onChunkComplete: options.onChunkComplete ? (a, b, c) => options.onChunkComplete(upload, a, b, c) : undefined,
    });
    upload.start();
  });
}

if (mode === "parallel") {
  const u = await run({ parallelUploads: 4, chunkSize: 2 * 1024 * 1024 });
  console.log(JSON.stringify({ url: u.url }));
} else if (mode === "creation") {
  const u = await run({ uploadDataDuringCreation: true, chunkSize: 1024 * 1024 });
  console.log(JSON.stringify({ url: u.url }));
} else if (mode === "abort") {
  const url = await new Promise((resolve, reject) => {
    const upload = new tus.Upload(data, {
      endpoint,
      metadata: { path: target },
      chunkSize: 256 * 1024,
      onError: reject,
      onSuccess: () => reject(new Error("finished before the abort")),
      onChunkComplete: () => {
        const url = upload.url;
        upload.abort(true).then(() => resolve(url), reject);
      },
    });
    upload.start();
  });
  console.log(JSON.stringify({ url, aborted: true }));
} else {
  throw new Error("unknown mode " + mode);
}
