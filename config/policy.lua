-- The seed document's policy ("Routing Messages via NATS"), unchanged in shape:
-- `init` connects once, `get_queue_config` routes the `nats` queue to the
-- custom_lua constructor `make.nats`, and `make.nats` publishes the record it
-- is called for (the relay binds the global `message` to it).
local kumo = require 'kumo'

kumo.on('init', function()
  nats = kumo.nats.connect {
    servers = { '127.0.0.1:4222' },
  }
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'nats' then
    return kumo.make_queue_config {
      protocol = {
        custom_lua = {
          constructor = 'make.nats',
        },
      },
    }
  end
  return kumo.make_queue_config {}
end)

kumo.on('make.nats', function(domain, tenant, campaign)
  nats:publish {
    subject = 'kumo.log.' .. (message:get_meta('log_record') or {}).type,
    payload = message:get_data(),
  }
end)
