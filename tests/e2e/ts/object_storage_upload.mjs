// Uploads build contexts the way the official TypeScript SDK does (ListObjectsV2 to skip,
// then @aws-sdk/lib-storage's Upload), through SnapshotService.processImageContext itself.
// Reads DAYTONA_API_URL / DAYTONA_API_KEY and CONTEXT_ROOT; prints one JSON line.
import { Daytona, Image } from '@daytona/sdk'
import { S3Client, PutObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3'

process.chdir(process.env.CONTEXT_ROOT)
const daytona = new Daytona()
// Paths as given stay relative, as in the SDK's own examples: COPY ctx/a.txt … (the base is
// the test fixture registry's busybox, tests/fixtures/harness.py: BUSYBOX; nothing is pulled).
const image = Image.base('fixtures.cove.test/busybox:1').addLocalFile('ctx/a.txt', '/app/a.txt').addLocalDir('ctx', '/app/ctx')
const SnapshotService = daytona.snapshot.constructor
const started = Date.now()
const hashes = await SnapshotService.processImageContext(daytona.objectStorageApi, image)
const firstMs = Date.now() - started
const again = await SnapshotService.processImageContext(daytona.objectStorageApi, image)

// Another organization's prefix, with this organization's credentials.
const access = (await daytona.objectStorageApi.getPushAccess()).data
const s3 = new S3Client({
  region: access.region,
  endpoint: access.storageUrl,
  forcePathStyle: true,
  credentials: { accessKeyId: access.accessKey, secretAccessKey: access.secret, sessionToken: access.sessionToken },
})
const refused = {}
for (const [name, cmd] of [
  ['put', new PutObjectCommand({ Bucket: access.bucket, Key: 'someone-else/x/context.tar', Body: Buffer.from('x') })],
  ['list', new ListObjectsV2Command({ Bucket: access.bucket, Prefix: 'someone-else/', MaxKeys: 1 })],
]) {
  try {
    await s3.send(cmd)
    refused[name] = null
  } catch (e) {
    refused[name] = e.name
  }
}
// No process.exit: node must end on its own (tests/fixtures/tsrun.py checks lastCallDoneAt).
console.log(JSON.stringify({
  hashes,
  again,
  firstMs,
  organizationId: access.organizationId,
  refused,
  dockerfile: image.dockerfile,
  lastCallDoneAt: Date.now(),
}))
