/* The relay's own policy-extras.log_hooks: kumod's API (log_hooks:new, log_hooks:new_json,
 * assets/policy-extras/log_hooks.lua), written for the relay. It is preloaded, so it wins
 * over a kumod installation's copy on package.path, which needs kumod-only modules. */
#include "lua_kumod.h"

#include <lauxlib.h>

static const char log_hooks_source[] =
    "local kumo = require 'kumo'\n"
    "local mod = { CONFIGURED = {} }\n"
    "\n"
    "-- option -> Lua type; required ones are listed in `required`\n"
    "local function check(what, options, types, required)\n"
    "  if type(options) ~= 'table' then\n"
    "    error(what .. ': expected a table of options', 3)\n"
    "  end\n"
    "  for k, v in pairs(options) do\n"
    "    local want = types[k]\n"
    "    if not want then\n"
    "      error(string.format(\"%s: unknown option '%s'\", what, tostring(k)), 3)\n"
    "    end\n"
    "    if type(v) ~= want then\n"
    "      error(string.format('%s: %s must be a %s, not a %s', what, k, want, type(v)), 3)\n"
    "    end\n"
    "  end\n"
    "  for _, k in ipairs(required) do\n"
    "    if options[k] == nil then\n"
    "      error(string.format(\"%s: option '%s' is required\", what, k), 3)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "\n"
    "local function with(defaults, overrides)\n"
    "  local t = {}\n"
    "  for k, v in pairs(defaults or {}) do t[k] = v end\n"
    "  for k, v in pairs(overrides or {}) do t[k] = v end\n"
    "  return t\n"
    "end\n"
    "\n"
    "local NEW_OPTIONS = {\n"
    "  name = 'string', log_parameters = 'table', queue_config = 'table',\n"
    "  constructor = 'function',\n"
    "}\n"
    "\n"
    "-- The hook's records go to the queue '<name>.log_hook', whose constructor event is\n"
    "-- 'make.<name>.log_hook': the names kumod's module uses, so a policy that refers to\n"
    "-- them keeps working.\n"
    "local function register(options, configure)\n"
    "  local name = options.name\n"
    "  if mod.CONFIGURED[name] then\n"
    "    error(string.format(\"log_hook with name '%s' has already been configured\", name), 3)\n"
    "  end\n"
    "  mod.CONFIGURED[name] = options\n"
    "  if configure then\n"
    "    kumo.on('pre_init', function()\n"
    "      kumo.configure_log_hook(with(options.log_parameters, { name = name }))\n"
    "    end)\n"
    "  end\n"
    "  local domain = name .. '.log_hook'\n"
    "  local constructor = 'make.' .. domain\n"
    "  kumo.on('should_enqueue_log_record', function(message, hook_name)\n"
    "    if hook_name ~= name then\n"
    "      return\n"
    "    end\n"
    "    local record = message:get_meta('log_record')\n"
    "    -- the records of a hook's own deliveries: logging them would loop in kumod\n"
    "    if record and record.reception_protocol == 'LogRecord' then\n"
    "      return false\n"
    "    end\n"
    "    message:set_meta('queue', domain)\n"
    "    return true\n"
    "  end)\n"
    "  local queue_config = with({ retry_interval = '1m', max_retry_interval = '20m' },\n"
    "    options.queue_config)\n"
    "  queue_config.protocol = { custom_lua = { constructor = constructor } }\n"
    "  -- checked now, so --check reports a bad queue_config\n"
    "  kumo.make_queue_config(queue_config)\n"
    "  kumo.on('get_queue_config', function(d)\n"
    "    if d == domain then\n"
    "      return kumo.make_queue_config(queue_config)\n"
    "    end\n"
    "  end)\n"
    "  kumo.on(constructor, options.constructor)\n"
    "end\n"
    "\n"
    "function mod:new(options)\n"
    "  check('log_hooks:new', options, NEW_OPTIONS, { 'name', 'constructor' })\n"
    "  register(options, true)\n"
    "end\n"
    "\n"
    "-- kumod POSTs each record to `url` with kumo.http, which the relay does not have:\n"
    "-- the hook is accepted so that the policy loads, and is never configured, so the\n"
    "-- relay never serves it.\n"
    "function mod:new_json(options)\n"
    "  local types = with(NEW_OPTIONS, { url = 'string', constructor = false })\n"
    "  check('log_hooks:new_json', options, types, { 'name', 'url' })\n"
    "  kumo.log_info(string.format(\"log_hooks:new_json '%s' posts to %s over HTTP, which \"\n"
    "    .. 'the relay does not do; the hook is not served', options.name, options.url))\n"
    "  local url = options.url\n"
    "  register(with(options, {\n"
    "    url = false,\n"
    "    constructor = function()\n"
    "      error('log_hooks:new_json: the relay has no HTTP client for ' .. url)\n"
    "    end,\n"
    "  }), false)\n"
    "end\n"
    "\n"
    "return mod\n";

static int load_log_hooks(lua_State *L)
{
    if (luaL_loadbufferx(L, log_hooks_source, sizeof(log_hooks_source) - 1,
                         "=policy-extras.log_hooks", "t") != LUA_OK)
        return lua_error(L);
    lua_call(L, 0, 1);
    return 1;
}

void lua_log_hooks_preload(lua_State *L)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, load_log_hooks);
    lua_setfield(L, -2, "policy-extras.log_hooks");
    lua_pop(L, 2);
}
