# The .deb and the .rpm, from one build: `cpack -G "DEB;RPM"` in a build configured with
# this file included (see packaging/README.md for the commands and the reasons).
#
# What goes into the packages is installed here, in components, and never by a plain
# `cmake --install`: every rule below is EXCLUDE_FROM_ALL, so a developer's install into
# /usr/local does not write /etc or a systemd unit, and the packages contain exactly the
# components CPack is told to take (CPACK_COMPONENTS_ALL), never a test tool.
#
#   relay  the binary, the configuration, the documentation, the sysusers.d file,
#          the logrotate snippet (both packages)
#   deb    the unit in /lib/systemd/system (Debian 12's systemdsystemunitdir),
#          copyright and changelog.Debian.gz
#   rpm    the unit in /usr/lib/systemd/system (%{_unitdir}), LICENSE as %license
#
# packaging/cpack-generator.cmake picks `relay;deb` or `relay;rpm` per generator.

set(RELAY_PACKAGE_NAME kumo-nats-relay)
# Who builds the packages answers for them: set it to your name and address when you
# distribute your own build (-DRELAY_PACKAGE_MAINTAINER="Jane Doe <jane@example.org>").
set(RELAY_PACKAGE_MAINTAINER
    "kumo-nats-relay maintainers <kumo-nats-relay@users.noreply.github.com>"
    CACHE STRING "Maintainer of the .deb and Packager of the .rpm")
set(RELAY_PACKAGE_HOMEPAGE "https://github.com/kumo-nats-relay/kumo-nats-relay"
    CACHE STRING "Homepage of the .deb and URL of the .rpm")
set(RELAY_PACKAGE_RELEASE 1 CACHE STRING "Package release (Debian revision, RPM Release)")
set(_pkg_doc share/doc/${RELAY_PACKAGE_NAME})
set(_pkg_src ${CMAKE_CURRENT_LIST_DIR})

# relay: shipped by both packages. Paths are relative to the packaging prefix (/usr)
# except the configuration, which lives in /etc whatever the prefix.
install(TARGETS kumo-nats-relay RUNTIME DESTINATION bin
        COMPONENT relay EXCLUDE_FROM_ALL)
install(FILES ${PROJECT_SOURCE_DIR}/config/relay.yaml ${PROJECT_SOURCE_DIR}/config/policy.lua
        DESTINATION /etc/${RELAY_PACKAGE_NAME}
        PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
        COMPONENT relay EXCLUDE_FROM_ALL)
install(FILES ${PROJECT_SOURCE_DIR}/README.md DESTINATION ${_pkg_doc}
        COMPONENT relay EXCLUDE_FROM_ALL)
# The system user, declared once for systemd-sysusers; the maintainer scripts apply it.
install(FILES ${_pkg_src}/sysusers/kumo-nats-relay.conf DESTINATION lib/sysusers.d
        COMPONENT relay EXCLUDE_FROM_ALL)
# The dead-letter file's rotation (the relay reopens it on SIGHUP); a conffile.
install(FILES ${_pkg_src}/logrotate/kumo-nats-relay DESTINATION /etc/logrotate.d
        PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
        COMPONENT relay EXCLUDE_FROM_ALL)
# The manual page is the binary's own --help and --version, through help2man, made when
# the packages are (an install step, so everyday builds never run it) and never out of
# step with the command line.
find_program(RELAY_HELP2MAN help2man)
find_program(RELAY_GZIP gzip REQUIRED)
if(RELAY_HELP2MAN)
  set(_pkg_man ${CMAKE_BINARY_DIR}/packaging/kumo-nats-relay.8)
  install(CODE "
    execute_process(COMMAND \"${RELAY_HELP2MAN}\" --no-info --section 8
        --name \"relay KumoMTA's log spool to NATS JetStream\"
        --include \"${_pkg_src}/kumo-nats-relay.h2m\" --output \"${_pkg_man}\"
        \"$<TARGET_FILE:kumo-nats-relay>\" RESULT_VARIABLE rc)
    if(rc EQUAL 0)
      execute_process(COMMAND \"${RELAY_GZIP}\" -9nf \"${_pkg_man}\" RESULT_VARIABLE rc)
    endif()
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR \"packaging: the manual page could not be made\")
    endif()"
    COMPONENT relay EXCLUDE_FROM_ALL)
  install(FILES ${_pkg_man}.gz DESTINATION share/man/man8
          COMPONENT relay EXCLUDE_FROM_ALL)
else()
  message(STATUS "help2man not found: the packages will have no manual page")
endif()
install(FILES ${PROJECT_SOURCE_DIR}/config/relay.yaml ${PROJECT_SOURCE_DIR}/config/policy.lua
              ${PROJECT_SOURCE_DIR}/config/policy-connection.lua
              ${PROJECT_SOURCE_DIR}/packaging/prometheus/kumo-nats-relay.rules.yml
              ${PROJECT_SOURCE_DIR}/packaging/grafana/kumo-nats-relay.json
        DESTINATION ${_pkg_doc}/examples
        COMPONENT relay EXCLUDE_FROM_ALL)

# deb
install(FILES ${PROJECT_SOURCE_DIR}/systemd/kumo-nats-relay.service
        DESTINATION /lib/systemd/system
        COMPONENT deb EXCLUDE_FROM_ALL)
# The changelog is generated (the version and the date come from the build) and
# compressed without a name or a timestamp in the gzip header, as Debian wants.
string(TIMESTAMP _pkg_date "%a, %d %b %Y %H:%M:%S +0000" UTC) # honours SOURCE_DATE_EPOCH
set(_pkg_version ${PROJECT_VERSION})
configure_file(${_pkg_src}/debian/changelog.in ${CMAKE_BINARY_DIR}/packaging/changelog.Debian @ONLY)
execute_process(COMMAND ${RELAY_GZIP} -9nf ${CMAKE_BINARY_DIR}/packaging/changelog.Debian
                RESULT_VARIABLE _gzip_rc)
if(NOT _gzip_rc EQUAL 0)
  message(FATAL_ERROR "packaging: gzip of changelog.Debian failed")
endif()
install(FILES ${_pkg_src}/debian/copyright ${CMAKE_BINARY_DIR}/packaging/changelog.Debian.gz
        DESTINATION ${_pkg_doc}
        COMPONENT deb EXCLUDE_FROM_ALL)
install(FILES ${_pkg_src}/debian/lintian-overrides DESTINATION share/lintian/overrides
        RENAME ${RELAY_PACKAGE_NAME}
        COMPONENT deb EXCLUDE_FROM_ALL)

# rpm
install(FILES ${PROJECT_SOURCE_DIR}/systemd/kumo-nats-relay.service
        DESTINATION lib/systemd/system
        COMPONENT rpm EXCLUDE_FROM_ALL)
# Debian points at /usr/share/common-licenses from debian/copyright instead.
install(FILES ${PROJECT_SOURCE_DIR}/LICENSE DESTINATION share/licenses/${RELAY_PACKAGE_NAME}
        COMPONENT rpm EXCLUDE_FROM_ALL)
# %pre creates the user before the files (and the sysusers.d file) land: the file's
# text goes into the scriptlet.
file(READ ${_pkg_src}/sysusers/kumo-nats-relay.conf RELAY_SYSUSERS_CONF)
string(STRIP "${RELAY_SYSUSERS_CONF}" RELAY_SYSUSERS_CONF)
configure_file(${_pkg_src}/rpm/pre.sh.in ${CMAKE_BINARY_DIR}/packaging/rpm-pre.sh @ONLY)

# Both generators.
set(CPACK_PACKAGE_NAME ${RELAY_PACKAGE_NAME})
set(CPACK_PACKAGE_VENDOR "kumo-nats-relay")
set(CPACK_PACKAGE_CONTACT "${RELAY_PACKAGE_MAINTAINER}")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "Relay KumoMTA's log spool to NATS JetStream")
# Wrapped by hand: the DEB generator keeps the line breaks (Debian wants < 80 columns).
string(CONCAT CPACK_PACKAGE_DESCRIPTION
  "kumo-nats-relay runs next to KumoMTA, reads the zstd log segments kumod\n"
  "writes (while kumod is still writing them), applies a routing policy (a\n"
  "subject template or a KumoMTA-style Lua policy) and publishes every log\n"
  "record to NATS JetStream.\n"
  "\n"
  "A record's offset is checkpointed only once JetStream acknowledged it, and\n"
  "every message carries a deterministic Nats-Msg-Id: after a crash the\n"
  "records are sent again and JetStream drops the copies it already has.")
set(CPACK_RPM_PACKAGE_DESCRIPTION "${CPACK_PACKAGE_DESCRIPTION}")
set(CPACK_PACKAGE_HOMEPAGE_URL "${RELAY_PACKAGE_HOMEPAGE}")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_PACKAGE_RELOCATABLE OFF)
set(CPACK_GENERATOR DEB RPM)
set(CPACK_SOURCE_GENERATOR "")
set(CPACK_COMPONENTS_GROUPING ALL_COMPONENTS_IN_ONE)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_RPM_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL relay deb rpm) # narrowed per generator
set(CPACK_PROJECT_CONFIG_FILE ${_pkg_src}/cpack-generator.cmake)
set(CPACK_VERBATIM_VARIABLES ON)

# DEB
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE ${RELAY_PACKAGE_RELEASE})
set(CPACK_DEBIAN_PACKAGE_SECTION mail)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${RELAY_PACKAGE_MAINTAINER}")
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON) # runtime libraries, from the binary's NEEDED
set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "nats-server")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${_pkg_src}/debian/conffiles ${_pkg_src}/debian/postinst
    ${_pkg_src}/debian/prerm ${_pkg_src}/debian/postrm)

# RPM
set(CPACK_RPM_FILE_NAME RPM-DEFAULT)
set(CPACK_RPM_PACKAGE_RELEASE ${RELAY_PACKAGE_RELEASE})
set(CPACK_RPM_PACKAGE_RELEASE_DIST ON)
set(CPACK_RPM_PACKAGE_LICENSE "Apache-2.0")
set(CPACK_RPM_PACKAGE_GROUP "System Environment/Daemons")
set(CPACK_RPM_PACKAGE_URL "${CPACK_PACKAGE_HOMEPAGE_URL}")
set(CPACK_RPM_PACKAGE_AUTOREQ ON) # runtime libraries, from rpmbuild's ELF dependency generator
set(CPACK_RPM_PACKAGE_AUTOPROV OFF)
set(CPACK_RPM_PACKAGE_RELOCATABLE OFF)
# No /usr/lib/.build-id links: the package holds the files listed in the README, no more.
# %packager: the Packager tag, the RPM's counterpart of the .deb's Maintainer.
set(CPACK_RPM_SPEC_MORE_DEFINE "%define _build_id_links none\n%define packager ${RELAY_PACKAGE_MAINTAINER}")
set(CPACK_RPM_PACKAGE_REQUIRES_PRE "shadow-utils")
set(CPACK_RPM_PACKAGE_REQUIRES_POST "systemd")
set(CPACK_RPM_PACKAGE_REQUIRES_PREUN "systemd")
set(CPACK_RPM_PACKAGE_REQUIRES_POSTUN "systemd")
set(CPACK_RPM_PRE_INSTALL_SCRIPT_FILE ${CMAKE_BINARY_DIR}/packaging/rpm-pre.sh)
set(CPACK_RPM_POST_INSTALL_SCRIPT_FILE ${_pkg_src}/rpm/post.sh)
set(CPACK_RPM_PRE_UNINSTALL_SCRIPT_FILE ${_pkg_src}/rpm/preun.sh)
set(CPACK_RPM_POST_UNINSTALL_SCRIPT_FILE ${_pkg_src}/rpm/postun.sh)
# The configuration directory is readable by the relay's group only (it may hold NATS
# credentials); the files in it are the operator's once installed.
set(CPACK_RPM_USER_FILELIST
    "%dir %attr(0750,root,kumo-nats-relay) /etc/kumo-nats-relay"
    "%config(noreplace) /etc/kumo-nats-relay/relay.yaml"
    "%config(noreplace) /etc/kumo-nats-relay/policy.lua"
    "%config(noreplace) /etc/logrotate.d/kumo-nats-relay"
    "%license /usr/share/licenses/kumo-nats-relay/LICENSE")
set(CPACK_RPM_EXCLUDE_FROM_AUTO_FILELIST_ADDITION
    /etc/logrotate.d /usr/lib/systemd /usr/lib/systemd/system /usr/lib/sysusers.d /usr/share/man
    /usr/share/man/man8 /usr/share/licenses)

include(CPack)
