// The reference topology's order-fulfillment saga (topology/topology.yaml) on Restate, the
// peer of `sluice saga bench --peer restate`: an orchestrator and the three demo participants
// of consumers/sagas/src/demo.rs, each participant a Restate service of its own, so every step
// is a durable call through the Restate server, as every sluice step is a command/reply round
// trip through Kafka. Run by `dev/restate/run services PORT`; listens on 127.0.0.1 only.
//
// Steps: reserve-inventory → charge-payment → create-shipment. When a step fails (an order
// line with SKU FAIL-<ROLE>, as in the demo participants), the completed steps are compensated
// in reverse order (release, refund, cancel); a compensation failing (FAIL-<ROLE>-UNDO) is
// retried by Restate, like sluice's compensation retry. The saga's result says which.

// SDK 1.17 uses Promise.withResolvers (Node 22+); Node 20 lacks it. Set before the SDK loads,
// hence the dynamic import below.
if (typeof Promise.withResolvers !== "function") {
  Promise.withResolvers = function withResolvers() {
    let resolve;
    let reject;
    const promise = new this((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}

const restate = await import("@restatedev/restate-sdk");
const http2 = await import("node:http2");

const skus = (order) =>
  (order.line_items ?? []).map((line) => String(line.sku ?? "").toUpperCase());

/** A short id for a step's result, drawn from Restate's deterministic randomness. */
const token = (ctx) => ctx.rand.uuidv4().replaceAll("-", "").slice(0, 12);

/** One demo participant role: an action and its compensation, failing on demand. */
function participant(name, role, action, undo, result) {
  const upper = role.toUpperCase();
  return restate.service({
    name,
    handlers: {
      [action]: async (ctx, order) => {
        if (skus(order).includes(`FAIL-${upper}`)) {
          throw new restate.TerminalError(`simulated ${role} failure`);
        }
        return result(ctx, order);
      },
      [undo]: async (ctx, req) => {
        if (skus(req.order).includes(`FAIL-${upper}-UNDO`)) {
          throw new Error(`simulated ${role} compensation failure`);
        }
        return { undone: req.compensates };
      },
    },
  });
}

const inventory = participant("Inventory", "inventory", "reserve", "release", (ctx) => ({
  reservation_id: `res_${token(ctx)}`,
}));
const payments = participant("Payments", "payments", "charge", "refund", (ctx, order) => ({
  charge_id: `ch_${token(ctx)}`,
  amount: order.total ?? null,
}));
const shipping = participant("Shipping", "shipping", "create", "cancel", (ctx) => ({
  shipment_id: `shp_${token(ctx)}`,
}));

/** The saga's steps in order: name, participant, action, compensation. */
const STEPS = [
  ["reserve-inventory", inventory, "reserve", "release"],
  ["charge-payment", payments, "charge", "refund"],
  ["create-shipment", shipping, "create", "cancel"],
];

const orderFulfillment = restate.service({
  name: "OrderFulfillment",
  handlers: {
    run: async (ctx, order) => {
      const done = [];
      const results = {};
      for (const [step, service, action, undo] of STEPS) {
        try {
          results[step] = await ctx.serviceClient(service)[action](order);
          done.push([step, service, undo]);
        } catch (e) {
          if (!(e instanceof restate.TerminalError)) throw e;
          const undone = [];
          for (const [compensates, s, u] of done.reverse()) {
            await ctx.serviceClient(s)[u]({ order, compensates, result: results[compensates] });
            undone.push(compensates);
          }
          return { order_id: order.order_id, status: "compensated", failed: step, undone };
        }
      }
      return { order_id: order.order_id, status: "completed", results };
    },
  },
});

const port = Number(process.argv[2] ?? process.env.PORT ?? 9080);
const handler = restate.createEndpointHandler({
  services: [orderFulfillment, inventory, payments, shipping],
});
http2.createServer(handler).listen(port, "127.0.0.1", () => {
  console.error(`restate saga services listening on 127.0.0.1:${port}`);
});
