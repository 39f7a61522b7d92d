// The Emmett peer of `python -m bench peer` (bench/emmett.py runs it; see README.md here).
//
// Reads one JSON object on stdin:
//   {"connectionString": "postgresql://...", "meetings": [["a", "b", minutes], ...],
//    "sequential": 500, "inFlight": 16}
// and prints one JSON object on stdout with the timings and the projected totals.
//
// Emmett is used the way its docs and tests show:
//   * getPostgreSQLEventStore(connectionString), schema.migrate(), one stream per meeting
//     (`meeting-<i>`), one appendToStream per meeting: the first `sequential` awaited one at a
//     time, the rest with `inFlight` appends in flight;
//   * async projections, each caught up from zero by its own postgreSQLEventStoreConsumer with
//     one projector (default pulling: batches of 100, each batch in one transaction with its
//     checkpoint), stopped after the last appended global position:
//       - postgreSQLRawSQLProjection: one upsert per event into a per-pair table;
//       - pongoMultiStreamProjection: one Pongo document per pair (evolve with initialState).
//     The database must be empty of other Emmett events (bench/emmett.py makes a new one).
//     Both keep what bench/peer.py's eventsourcing view keeps: meeting count and total minutes.
import { getPostgreSQLEventStore } from '@event-driven-io/emmett-postgresql';
import {
  pongoMultiStreamProjection,
  postgreSQLEventStoreConsumer,
  postgreSQLRawSQLProjection,
} from '@event-driven-io/emmett-postgresql';
import { dumbo, sql } from '@event-driven-io/dumbo';
import { readFileSync } from 'node:fs';

const EVENT = 'MeetingRecorded';
const PAIRS_TABLE = 'pair_meetings';
const PAIRS_COLLECTION = 'pair_meetings_doc';

const installedVersion = (name) =>
  JSON.parse(readFileSync(new URL(`./node_modules/${name}/package.json`, import.meta.url))).version;

const readStdin = async () => {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
};

const pairOf = (data) => (data.a < data.b ? [data.a, data.b] : [data.b, data.a]);

const meetingEvent = ([a, b, minutes]) => ({ type: EVENT, data: { a, b, minutes } });

const appendAll = async (store, meetings, sequential, inFlight) => {
  let lastPosition = 0n;
  const append = async (i) => {
    const r = await store.appendToStream(`meeting-${i}`, [meetingEvent(meetings[i])]);
    if (r.lastEventGlobalPosition > lastPosition) lastPosition = r.lastEventGlobalPosition;
  };
  const seqCount = Math.min(sequential, meetings.length);
  let t0 = process.hrtime.bigint();
  for (let i = 0; i < seqCount; i++) await append(i);
  const seqS = Number(process.hrtime.bigint() - t0) / 1e9;
  let next = seqCount;
  const worker = async () => {
    while (next < meetings.length) await append(next++);
  };
  t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: inFlight }, worker));
  const concS = Number(process.hrtime.bigint() - t0) / 1e9;
  return {
    sequential: [seqCount, seqS],
    concurrent: [meetings.length - seqCount, concS],
    lastPosition,
  };
};

const rawSqlProjection = postgreSQLRawSQLProjection({
  name: 'pairs_raw_sql',
  canHandle: [EVENT],
  init: () =>
    sql(
      'CREATE TABLE IF NOT EXISTS %I (a text NOT NULL, b text NOT NULL, meetings int NOT NULL, ' +
        'minutes bigint NOT NULL, PRIMARY KEY (a, b))',
      PAIRS_TABLE,
    ),
  evolve: (event) => {
    const [a, b] = pairOf(event.data);
    return sql(
      'INSERT INTO %I AS p VALUES (%L, %L, 1, %s) ON CONFLICT (a, b) DO UPDATE SET ' +
        'meetings = p.meetings + 1, minutes = p.minutes + EXCLUDED.minutes',
      PAIRS_TABLE,
      a,
      b,
      Number(event.data.minutes),
    );
  },
});

const pongoPairsProjection = pongoMultiStreamProjection({
  collectionName: PAIRS_COLLECTION,
  canHandle: [EVENT],
  getDocumentId: (event) => pairOf(event.data).join('|'),
  initialState: () => ({ meetings: 0, minutes: 0 }),
  evolve: (doc, event) => ({
    ...doc,
    meetings: doc.meetings + 1,
    minutes: doc.minutes + Number(event.data.minutes),
  }),
});

// Catches one projection up from zero with its own consumer and returns how many events its
// projector handled and the time until the last of them. Stops after `expected` events, or when
// nothing new has arrived for `idleMs` (not "after the highest appended global position": Emmett
// reads in (transaction id, global position) order, so with appends in flight the highest
// position is not the last event read, and an event it skipped never arrives).
const catchUp = async (connectionString, { projection, pulling }, expected, idleMs) => {
  const consumer = postgreSQLEventStoreConsumer({ connectionString, ...(pulling ? { pulling } : {}) });
  let handled = 0;
  const t0 = process.hrtime.bigint();
  let last = t0;
  consumer.projector({
    processorId: `bench-${projection.name}`,
    projection,
    stopAfter: () => {
      last = process.hrtime.bigint();
      return ++handled >= expected;
    },
  });
  const watchdog = setInterval(() => {
    if (Number(process.hrtime.bigint() - last) / 1e6 > idleMs) void consumer.stop();
  }, 100);
  try {
    await consumer.start();
  } finally {
    clearInterval(watchdog);
    await consumer.close();
  }
  return { handled, seconds: Number(last - t0) / 1e9, pulling: pulling ?? 'default' };
};

const totals = async (pool) => {
  const raw = await pool.execute.query(
    sql('SELECT count(*) AS pairs, sum(meetings) AS meetings, sum(minutes) AS minutes FROM %I',
      PAIRS_TABLE),
  );
  // A Pongo collection is a table of (_id, data jsonb, ...).
  const doc = await pool.execute.query(
    sql(
      "SELECT count(*) AS pairs, sum((data->>'meetings')::int) AS meetings, " +
        "sum((data->>'minutes')::bigint) AS minutes FROM %I",
      PAIRS_COLLECTION,
    ),
  );
  const asNumbers = (row) => Object.fromEntries(
    Object.entries(row).map(([k, v]) => [k, Number(v ?? 0)]),
  );
  return { raw_sql: asNumbers(raw.rows[0]), pongo: asNumbers(doc.rows[0]) };
};

const main = async () => {
  const input = await readStdin();
  const { connectionString, meetings } = input;
  const store = getPostgreSQLEventStore(connectionString);
  let appended;
  try {
    await store.schema.migrate();
    appended = await appendAll(store, meetings, input.sequential ?? 500, input.inFlight ?? 16);
  } finally {
    await store.close();
  }
  const runs = {
    raw_sql: { projection: rawSqlProjection },
    pongo: { projection: pongoPairsProjection },
  };
  const projections = {};
  for (const [kind, run] of Object.entries(runs)) {
    projections[kind] = await catchUp(connectionString, run, meetings.length, input.idleMs ?? 5000);
  }
  const pool = dumbo({ connectionString });
  try {
    const projected = await totals(pool);
    for (const kind of Object.keys(projections)) projections[kind].projected = projected[kind];
  } finally {
    await pool.close();
  }
  const out = {
    emmett_version: installedVersion('@event-driven-io/emmett-postgresql'),
    node_version: process.version,
    sequential: appended.sequential,
    concurrent: appended.concurrent,
    in_flight: input.inFlight ?? 16,
    last_global_position: Number(appended.lastPosition),
    projections,
  };
  process.stdout.write(`${JSON.stringify(out)}\n`);
};

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
