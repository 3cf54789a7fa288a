#version 450
// vk-render: positions come in pixels, (0, 0) at the top left of the
// framebuffer; Vulkan's normalized device coordinates have y down as well.
layout(location = 0) in vec2 position;
layout(push_constant) uniform Params { vec4 colour; vec2 size; } p;

void main()
{
    gl_Position = vec4(position / (p.size * 0.5) - 1.0, 0.0, 1.0);
}
