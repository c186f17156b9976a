-- A Lua policy in KumoMTA's connection-object shape.
--
-- should_enqueue_log_record picks the records to relay and the queue for each;
-- get_queue_config routes each queue to a custom_lua constructor; the constructor
-- returns a connection object whose send() publishes the record. The relay calls
-- the constructor once per queue and send() once per record.
local kumo = require 'kumo'

local NATS_SERVERS = { '127.0.0.1:4222' }

kumo.on('init', function()
  kumo.log_info('policy loaded')
end)

-- Relay deliveries and bounces to their own queues; drop the rest of the
-- receptions' noise (Reception records are counted as dropped by the relay).
kumo.on('should_enqueue_log_record', function(message, hook_name)
  local record = message:get_meta('log_record')
  if not record then
    return false
  end
  if record.type == 'Reception' then
    return false
  end
  if record.type == 'Bounce' or record.type == 'TransientFailure' then
    message:set_meta('queue', 'bounces')
  else
    message:set_meta('queue', 'events')
  end
  return true
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'bounces' then
    return kumo.make_queue_config {
      protocol = { custom_lua = { constructor = 'make.bounces' } },
      retry_interval = '1s',
      max_retry_interval = '1m',
    }
  end
  if domain == 'events' then
    return kumo.make_queue_config {
      protocol = { custom_lua = { constructor = 'make.events' } },
      retry_interval = '1s',
      max_retry_interval = '1m',
    }
  end
end)

-- One constructor per queue; both publish with a subject per record type.
local function connection(prefix)
  local client = kumo.nats.connect { servers = NATS_SERVERS, name = 'kumo-' .. prefix }
  return {
    send = function(self, message)
      local record = message:get_meta('log_record')
      client:publish {
        subject = prefix .. '.' .. record.type,
        payload = message:get_data(),
      }
      return 'published'
    end,
    close = function(self)
      client:close()
    end,
  }
end

kumo.on('make.bounces', function(domain, tenant, campaign)
  return connection('kumo.bounces')
end)

kumo.on('make.events', function(domain, tenant, campaign)
  return connection('kumo.events')
end)
