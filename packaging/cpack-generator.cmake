# CPACK_PROJECT_CONFIG_FILE: read by cpack once per generator. Each package takes the
# shared `relay` component and its own distribution's part (see packaging/cpack.cmake).
if(CPACK_GENERATOR STREQUAL "DEB")
  set(CPACK_COMPONENTS_ALL relay deb)
elseif(CPACK_GENERATOR STREQUAL "RPM")
  set(CPACK_COMPONENTS_ALL relay rpm)
endif()
